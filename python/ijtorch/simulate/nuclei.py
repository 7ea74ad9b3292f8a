"""Seeded synthetic 3D nuclei: ellipsoids in an anisotropic z-stack with blur and Poisson noise.

There is no annotated 3D nuclei data in the shared data, so the 3D star-convex model is trained,
tested and benchmarked on volumes from :func:`simulate_nuclei_3d`. Nuclei are randomly oriented
ellipsoids (semi-axes drawn from ``radius``, in physical units of the xy pixel size) placed with
little overlap (centres at least ``spacing`` times the sum of the two largest semi-axes apart);
the z step is ``anisotropy`` times the pixel size, so nuclei are flatter in voxels along z. The
image is each nucleus's brightness, blurred by a Gaussian of ``blur`` pixels (physical, so fewer
voxels along z), scaled to ``photons`` expected photons at full brightness over a ``background``
and drawn from a Poisson distribution (``uint16``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

__all__ = ["SimulatedVolume", "simulate_nuclei_3d"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatedVolume:
    """A simulated z-stack of nuclei and its ground truth.

    Attributes
    ----------
    image : ndarray of uint16, shape (Z, Y, X)
        Photon counts.
    labels : ndarray of uint16, shape (Z, Y, X)
        One label per nucleus, 1..N (a voxel claimed by two ellipsoids belongs to the first).
    centers : ndarray of float64, shape (N, 3)
        Nucleus centres in voxels ``(z, y, x)``.
    anisotropy : tuple of float
        Voxel size ``(z, y, x)`` relative to the pixel size.
    """

    image: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    anisotropy: tuple[float, float, float]


def simulate_nuclei_3d(shape: tuple[int, int, int] = (32, 96, 96), *, n_nuclei: int = 20,
                       radius: tuple[float, float] = (5.0, 9.0), anisotropy: float = 2.0, spacing: float = 0.85,
                       blur: float = 1.0, photons: float = 60.0, background: float = 5.0,
                       seed: int = 0) -> SimulatedVolume:
    """Simulate a ``ZYX`` volume of nuclei.

    Parameters
    ----------
    shape : (Z, Y, X)
        Volume shape in voxels.
    n_nuclei : int
        Nuclei to place; fewer are placed when no free position is found after many tries.
    radius : (min, max)
        Range of the ellipsoid semi-axes in pixels (physical).
    anisotropy : float
        z step over xy pixel size (>= 1 for typical confocal stacks).
    spacing : float
        Minimum centre distance over the sum of the two nuclei's largest semi-axes (< 1 lets
        nuclei touch and overlap a little).
    blur : float
        Gaussian blur sigma in pixels (physical).
    photons, background : float
        Expected photon counts at full brightness and of the background.
    seed : int
        Seed of the random generator.
    """
    if len(shape) != 3 or any(int(s) < 4 for s in shape):
        raise ValueError(f"shape={shape!r}: expected (Z, Y, X) with every size >= 4")
    if not 0.5 <= radius[0] <= radius[1]:
        raise ValueError(f"radius={radius!r}: expected (min, max) with 0.5 <= min <= max")
    for name, v in (("anisotropy", anisotropy), ("photons", photons)):
        if not v > 0:
            raise ValueError(f"{name}={v!r}: expected a number > 0")
    for name, v in (("n_nuclei", n_nuclei), ("spacing", spacing), ("blur", blur), ("background", background)):
        if not v >= 0:
            raise ValueError(f"{name}={v!r}: expected a number >= 0")
    rng = np.random.default_rng(seed)
    aniso = np.array([float(anisotropy), 1.0, 1.0])
    extent = np.asarray(shape, np.float64) * aniso  # physical size
    centres: list[np.ndarray] = []
    semis: list[np.ndarray] = []
    tries = 0
    while len(centres) < n_nuclei and tries < 200 * max(n_nuclei, 1):
        tries += 1
        semi = rng.uniform(radius[0], radius[1], 3)
        c = rng.uniform(0, 1, 3) * extent
        if centres:
            dist = np.linalg.norm(np.asarray(centres) - c, axis=1)
            if np.any(dist < spacing * (np.asarray(semis).max(1) + semi.max())):
                continue
        centres.append(c)
        semis.append(semi)
    labels = np.zeros(shape, np.uint16)
    brightness = np.zeros(len(centres) + 1, np.float32)
    for lab, (c, semi) in enumerate(zip(centres, semis), start=1):
        rot = Rotation.random(random_state=rng).as_matrix()
        r = semi.max()
        lo = np.maximum(np.floor((c - r) / aniso).astype(int), 0)
        hi = np.minimum(np.ceil((c + r) / aniso).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
        local = (grid * aniso - c) @ rot  # physical offsets in the ellipsoid's frame
        inside = np.sum((local / semi) ** 2, axis=-1) <= 1.0
        region = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
        region[inside & (region == 0)] = lab
        brightness[lab] = rng.uniform(0.6, 1.0)
    present = np.unique(labels)
    present = present[present > 0]  # nuclei left with voxels (not fully covered by earlier ones)
    lut = np.zeros(len(centres) + 1, np.uint16)
    lut[present] = np.arange(1, present.size + 1)
    labels = lut[labels]
    clean = brightness[np.concatenate([[0], present])][labels]
    if blur > 0:
        clean = ndi.gaussian_filter(clean, sigma=blur / aniso)
    image = rng.poisson(background + photons * clean).astype(np.uint16)
    kept = np.asarray(centres, np.float64).reshape(-1, 3)[present - 1] / aniso
    log.info("simulated %s volume with %d nuclei", shape, int(labels.max()))
    return SimulatedVolume(image=image, labels=labels, centers=kept, anisotropy=tuple(aniso.tolist()))
