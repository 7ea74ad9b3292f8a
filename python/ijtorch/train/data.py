"""Training data: loading image/label pairs, normalisation, joint augmentation, patches, splits.

Everything here works on numpy arrays with spatial axes only (``YX`` or ``ZYX``); images are
grayscale. Masks/label maps are always resampled with nearest neighbour so labels stay integers
and objects stay aligned with the image.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

__all__ = [
    "Pair", "load_pairs", "load_shared_segmentation", "AugmentConfig",
    "augment_pair", "random_patch", "split_train_val",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One training item: an image, its label map and a name (the file stem)."""

    name: str
    image: np.ndarray
    labels: np.ndarray


def load_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike | None = None) -> list[Pair]:
    """Load same-named images and label maps from ``images_dir`` and ``labels_dir``.

    Parameters
    ----------
    images_dir : path
        Folder of images (TIFF, or PNG / JPEG / ...: :data:`ijtorch.io.raster.IMAGE_SUFFIXES`), or a
        folder containing ``images/`` and ``labels/`` (then ``labels_dir`` must be omitted).
    labels_dir : path, optional
        Folder of label maps with the same name stems (TIFF or a lossless format such as 16-bit PNG).

    Returns
    -------
    list of Pair
        Sorted by name. Images whose label file is missing raise ``ValueError``.
    """
    from ..io.raster import IMAGE_SUFFIXES, image_files, read_array

    images_dir = Path(images_dir)
    if labels_dir is None:
        if not (images_dir / "images").is_dir() or not (images_dir / "labels").is_dir():
            raise ValueError(f"images_dir={str(images_dir)!r}: expected a folder with images/ and labels/ "
                             "sub-folders, or pass labels_dir")
        images_dir, labels_dir = images_dir / "images", images_dir / "labels"
    labels_dir = Path(labels_dir)
    for arg, p in (("images_dir", images_dir), ("labels_dir", labels_dir)):
        if not p.is_dir():
            raise ValueError(f"{arg}={str(p)!r} is not a folder")
    files = image_files(images_dir)
    if not files:
        raise ValueError(f"images_dir={str(images_dir)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    pairs = []
    for f in files:
        lab = next((labels_dir / (f.stem + s) for s in (f.suffix, *IMAGE_SUFFIXES) if (labels_dir / (f.stem + s)).exists()), None)
        if lab is None:
            raise ValueError(f"no label file for image {f.name!r} in labels_dir={str(labels_dir)!r}")
        image, labels = read_array(f), read_array(lab)
        if image.shape != labels.shape:
            raise ValueError(f"{f.name}: image shape {image.shape} differs from label shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{lab.name}: labels must be integers, got {labels.dtype}")
        pairs.append(Pair(f.stem, image, labels))
    log.info("loaded %d image/label pairs from %s", len(pairs), images_dir)
    return pairs


def load_shared_segmentation(name: str = "nuclei_dsb2018", split: str = "train", *,
                             root: str | os.PathLike | None = None) -> list[Pair]:
    """Load a segmentation data set from the shared-data layout ``root/name/split/{images,labels}``.

    ``root`` defaults to ``$IJTORCH_SHARED_DATA`` or ``../shared/data`` next to the repository.
    """
    if root is None:
        env = os.environ.get("IJTORCH_SHARED_DATA")
        root = Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"
    folder = Path(root) / name / split
    if not folder.is_dir():
        raise ValueError(f"name={name!r}, split={split!r}: {folder} does not exist")
    return load_pairs(folder)


class AugmentConfig(BaseModel):
    """Joint image/label augmentation settings (saved with the model's training summary)."""

    model_config = ConfigDict(extra="forbid")

    flips: bool = Field(True, description="random flips along every spatial axis")
    rot90: bool = Field(True, description="random 90-degree rotations in the YX plane (square patches)")
    scale_range: tuple[float, float] = Field((0.8, 1.25), description="isotropic zoom factor range; (1, 1) disables")
    scale_prob: float = Field(0.5, ge=0, le=1, description="probability of zooming a patch")
    elastic_prob: float = Field(0.2, ge=0, le=1, description="probability of an elastic deformation")
    elastic_alpha: float = Field(6.0, ge=0, description="maximum displacement in pixels of the elastic grid")
    elastic_grid: int = Field(4, ge=2, description="control points per axis of the elastic grid")
    intensity_prob: float = Field(0.8, ge=0, le=1, description="probability of a random contrast/brightness change")
    intensity_scale: tuple[float, float] = Field((0.7, 1.4), description="range of the multiplicative intensity factor")
    intensity_shift: float = Field(0.1, ge=0, description="maximum additive intensity shift (normalised units)")
    gamma_range: tuple[float, float] = Field((0.7, 1.5), description="gamma range applied to the [0,1]-clipped part")
    gamma_prob: float = Field(0.3, ge=0, le=1, description="probability of a gamma change")
    noise_prob: float = Field(0.3, ge=0, le=1, description="probability of additive Gaussian noise")
    noise_std: float = Field(0.05, ge=0, description="maximum noise standard deviation (normalised units)")


def _crop_padded(a: np.ndarray, start: Sequence[int], size: Sequence[int], mode: str) -> np.ndarray:
    """Crop ``a[start:start+size]``, padding (reflect or zeros) where the window leaves the array."""
    sl, pads = [], []
    for s, n, dim in zip(start, size, a.shape):
        lo, hi = max(s, 0), min(s + n, dim)
        sl.append(slice(lo, hi))
        pads.append((lo - s, s + n - hi))
    out = a[tuple(sl)]
    if any(p != (0, 0) for p in pads):
        if mode == "reflect" and all(max(p) < d for p, d in zip(pads, out.shape)):
            out = np.pad(out, pads, mode="reflect")
        else:
            out = np.pad(out, pads, mode="constant")
    return out


def _resample(image: np.ndarray, labels: np.ndarray, out_shape: tuple[int, ...], zoom: float,
              rng: np.random.Generator, cfg: AugmentConfig, elastic: bool,
              margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Zoom (and optionally elastically deform) a crop into ``out_shape``; labels nearest-neighbour."""
    grids = np.meshgrid(*[(np.arange(n, dtype=np.float32) + 0.5) / zoom - 0.5 + margin for n in out_shape],
                        indexing="ij")
    coords = np.stack(grids)
    if elastic:
        for d in range(len(out_shape)):
            coarse = rng.uniform(-cfg.elastic_alpha, cfg.elastic_alpha, size=(cfg.elastic_grid,) * len(out_shape))
            coords[d] += ndi.zoom(coarse, [n / cfg.elastic_grid for n in out_shape], order=3, mode="nearest")[
                tuple(slice(0, n) for n in out_shape)].astype(np.float32)
    img = ndi.map_coordinates(image, coords, order=1, mode="reflect")
    lab = ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
    return img.astype(np.float32), lab.astype(labels.dtype)


def augment_pair(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                 cfg: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flip/rotate both arrays identically and change the image's intensities (same shape out).

    Geometric resampling (zoom, elastic) happens in :func:`random_patch` because it changes the
    field of view. ``image`` must already be normalised (float).
    """
    cfg = cfg or AugmentConfig()
    if image.shape != labels.shape:
        raise ValueError(f"image shape {image.shape} differs from labels shape {labels.shape}")
    nd = image.ndim
    if cfg.flips:
        for ax in range(nd):
            if rng.random() < 0.5:
                image, labels = np.flip(image, ax), np.flip(labels, ax)
    if cfg.rot90 and image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, axes=(nd - 2, nd - 1)), np.rot90(labels, k, axes=(nd - 2, nd - 1))
    image = np.ascontiguousarray(image, dtype=np.float32)
    labels = np.ascontiguousarray(labels)
    if rng.random() < cfg.intensity_prob:
        image = image * np.float32(rng.uniform(*cfg.intensity_scale)) + np.float32(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift))
    if rng.random() < cfg.gamma_prob:
        g = np.float32(rng.uniform(*cfg.gamma_range))
        image = np.where(image > 0, np.clip(image, 0, None) ** g, image).astype(np.float32)
    if rng.random() < cfg.noise_prob:
        image = image + rng.normal(0, rng.uniform(0, cfg.noise_std), size=image.shape).astype(np.float32)
    return image.astype(np.float32, copy=False), labels


def random_patch(image: np.ndarray, labels: np.ndarray, patch_shape: Sequence[int], rng: np.random.Generator, *,
                 fg_fraction: float = 0.8, augment: AugmentConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample one augmented patch, centred on a foreground pixel with probability ``fg_fraction``.

    Parameters
    ----------
    image : ndarray
        Normalised float image (``YX`` or ``ZYX``).
    labels : ndarray
        Integer label map of the same shape.
    patch_shape : sequence of int
        Output patch shape (one entry per spatial axis). Images smaller than the patch are padded.
    rng : numpy.random.Generator
        Source of randomness.
    fg_fraction : float
        Fraction of patches centred on an object pixel (balances foreground).
    augment : AugmentConfig or None
        ``None`` returns plain crops (no augmentation).
    """
    patch_shape = tuple(int(p) for p in patch_shape)
    if len(patch_shape) != image.ndim:
        raise ValueError(f"patch_shape={patch_shape!r} needs {image.ndim} entries for an image of shape {image.shape}")
    if not 0 <= fg_fraction <= 1:
        raise ValueError(f"fg_fraction={fg_fraction!r}: expected a float in [0, 1]")
    zoom = 1.0
    elastic = False
    if augment is not None:
        if augment.scale_range != (1.0, 1.0) and rng.random() < augment.scale_prob:
            lo, hi = np.log(augment.scale_range[0]), np.log(augment.scale_range[1])
            zoom = float(np.exp(rng.uniform(lo, hi)))
        elastic = augment.elastic_alpha > 0 and rng.random() < augment.elastic_prob
    margin = int(np.ceil(augment.elastic_alpha)) + 1 if (elastic and augment is not None) else 0
    crop = tuple(int(np.ceil(p / zoom)) + 2 * margin for p in patch_shape)
    if rng.random() < fg_fraction and labels.any():
        fg = np.flatnonzero(labels)
        center = np.unravel_index(fg[rng.integers(fg.size)], labels.shape)
        start = [int(c) - n // 2 + int(rng.integers(-(n // 4), n // 4 + 1)) for c, n in zip(center, crop)]
        start = [min(max(s, min(0, d - n)), max(d - n, 0)) for s, n, d in zip(start, crop, labels.shape)]
    else:
        start = [int(rng.integers(0, max(d - n, 0) + 1)) for n, d in zip(crop, labels.shape)]
    img = _crop_padded(image, start, crop, "reflect")
    lab = _crop_padded(labels, start, crop, "constant")
    if zoom != 1.0 or elastic:  # the margin keeps elastically displaced samples inside the crop
        img, lab = _resample(img, lab, patch_shape, zoom, rng, augment, elastic, margin)  # type: ignore[arg-type]
    else:
        img, lab = img[tuple(slice(0, n) for n in patch_shape)], lab[tuple(slice(0, n) for n in patch_shape)]
    if augment is not None:
        img, lab = augment_pair(img, lab, rng, augment)
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(lab)


def split_train_val(n_items: int, *, val_fraction: float = 0.15, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic train/validation split of ``range(n_items)``.

    Returns sorted ``(train_indices, val_indices)``; at least one item goes to validation when
    ``val_fraction > 0`` and ``n_items >= 2``. The same ``(n_items, val_fraction, seed)`` always
    gives the same split (numpy ``default_rng(seed)`` permutation), on every platform.
    """
    if not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise ValueError(f"n_items={n_items!r}: expected a positive integer")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a float in [0, 1)")
    n_val = int(round(n_items * val_fraction))
    if val_fraction > 0 and n_items >= 2:
        n_val = max(n_val, 1)
    perm = np.random.default_rng(seed).permutation(int(n_items))
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])
