"""Classical baseline instance segmentation: Otsu threshold + distance-transform seeded watershed.

This is the reference a learned model has to beat in the benchmarks (``benchmarks/bench_segment.py``)
and a no-training fallback for well-separated, bright (fluorescent) objects. Steps:

1. optional Gaussian smoothing (``sigma``);
2. global Otsu threshold (objects brighter than the background, or darker with ``invert=True``),
   holes filled, objects smaller than ``min_size`` removed;
3. Euclidean distance transform of the foreground, seeds at its local maxima at least
   ``min_distance`` pixels apart and at least ``h`` above their surroundings (h-maxima, which
   suppresses over-splitting of elongated objects);
4. watershed of the inverted distance within the foreground, then small objects removed again and
   labels renumbered 1..N.

Intensities are not rescaled: Otsu is invariant to affine intensity changes, so no normalisation
parameter is needed.

Phase contrast defeats a global threshold: cells are dark *and* bright (halos), on a background of
the same mean. :func:`segment_phase_contrast` is the classical peer for it (the baseline of
``benchmarks/bench_segment_cells.py``), with every threshold taken from the image itself:

- ``objects="dark"`` (bacteria, small compact cells: dark bodies inside bright halos): three-class
  Otsu of the smoothed image, the darkest class is foreground — the halos between touching cells
  stay background and separate them;
- ``objects="textured"`` (spread whole cells: dark and bright detail on a flat background): local
  standard deviation in a ``window``, Otsu threshold, holes filled, then eroded by the window radius
  (the filter widens every object by that much);

then, for both, a distance-transform watershed seeded by h-maxima with ``h`` a fraction of the
median object half-width measured on that foreground (so the seed rule follows the object size).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ijtorch.image import check_axes

__all__ = ["PHASE_OBJECTS", "segment_classical", "segment_phase_contrast"]

#: What :func:`segment_phase_contrast` segments: dark bodies in bright halos, or textured cells.
PHASE_OBJECTS = ("dark", "textured")

log = logging.getLogger(__name__)


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = True) -> float:
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or value < 0 or (not allow_zero and value == 0):
        kind = "integer" if integer else "number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r}: expected a {kind} {bound}")
    return value


def segment_classical(
    image: np.ndarray,
    axes: str = "YX",
    *,
    sigma: float = 1.0,
    min_size: int = 15,
    min_distance: int = 4,
    h: float = 1.0,
    invert: bool = False,
) -> np.ndarray:
    """Segment bright, roughly convex objects with Otsu + seeded watershed.

    Parameters
    ----------
    image : numpy.ndarray
        2D grayscale image (any real dtype; not rescaled).
    axes : str, default "YX"
        Axes of ``image``; only ``"YX"`` is accepted (choose a plane or channel first).
    sigma : float, default 1.0
        Gaussian smoothing before thresholding, in pixels (0 disables it).
    min_size : int, default 15
        Objects (and foreground components) with fewer pixels are removed.
    min_distance : int, default 4
        Minimum distance in pixels between two seeds.
    h : float, default 1.0
        A distance-transform maximum must rise at least ``h`` pixels above the saddle to its
        neighbour to become a seed (0 keeps every local maximum).
    invert : bool, default False
        Segment objects darker than the background.

    Returns
    -------
    numpy.ndarray
        ``int32`` label map of the input's shape, 0 = background, objects 1..N.

    Raises
    ------
    ValueError
        If ``axes`` is not ``"YX"``, the image is not 2D/real-valued, or a parameter is out of range.

    Examples
    --------
    >>> img = np.zeros((64, 64)); img[10:25, 10:25] = 1; img[40:55, 30:50] = 1
    >>> int(segment_classical(img, "YX").max())
    2
    """
    img = _checked_float_image(image, axes, "segment_classical", sigma=sigma, min_size=min_size)
    _positive("min_distance", min_distance, integer=True, allow_zero=False)
    _positive("h", h)

    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    if sigma > 0:
        img = gaussian(img, sigma=float(sigma), preserve_range=True)
    if invert:
        img = -img
    if float(img.max()) == float(img.min()):
        log.info("segment_classical: constant image, no objects")
        return np.zeros(image.shape, np.int32)
    fg = img > threshold_otsu(img)
    fg = ndi.binary_fill_holes(fg)
    if min_size > 0:
        comp, _ = ndi.label(fg)
        fg = _remove_small(comp, int(min_size)) > 0
    if not fg.any():
        return np.zeros(image.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    # seeds: regional maxima of the distance rising at least h above their saddle (one connected
    # plateau = one marker), then markers closer than min_distance merged.
    if h > 0:
        seeds = h_maxima(dist, h).astype(bool) & fg
    else:
        seeds = (dist == ndi.maximum_filter(dist, size=3)) & fg
    markers, n_seeds = ndi.label(seeds)
    if n_seeds > 1 and min_distance > 1:
        markers = _merge_close_markers(markers, int(min_distance))
    labels = watershed(-dist, markers, mask=fg)
    # foreground components that received no seed (can't happen with h-maxima; keep them anyway)
    orphan, _ = ndi.label(fg & (labels == 0))
    if orphan.max():
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    if min_size > 0:
        labels = _remove_small(labels, int(min_size))
    labels, _, _ = relabel_sequential(labels)
    log.debug("segment_classical: %d seeds, %d objects", n_seeds, int(labels.max()))
    return labels.astype(np.int32)


def segment_phase_contrast(
    image: np.ndarray,
    axes: str = "YX",
    *,
    objects: str = "textured",
    window: int = 7,
    sigma: float = 1.0,
    h_fraction: float = 0.5,
    min_size: int = 50,
) -> np.ndarray:
    """Segment cells in a phase-contrast image: image-derived threshold + seeded watershed.

    Parameters
    ----------
    image : numpy.ndarray
        2D grayscale phase-contrast image (any real dtype; not rescaled).
    axes : str, default "YX"
        Axes of ``image``; only ``"YX"``.
    objects : {"textured", "dark"}, default "textured"
        ``"textured"``: spread whole cells (foreground = high local standard deviation);
        ``"dark"``: dark bodies in bright halos, such as bacteria (darkest of three Otsu classes).
        That class must be the dark bodies: in a sparse field whose background has dark patches
        (the first frames of the shared bacteria movie, 2-10 cells) it takes the background.
    window : int, default 7
        Side of the local standard deviation window in pixels (``"textured"`` only; odd, >= 3).
    sigma : float, default 1.0
        Gaussian smoothing in pixels before either foreground rule (0 disables it).
    h_fraction : float, default 0.5
        Seed rule: a distance maximum must rise ``h_fraction`` x the median object half-width
        (measured on this image's foreground) above its saddle to start its own object.
    min_size : int, default 50
        Foreground components and objects with fewer pixels are removed.

    Returns
    -------
    numpy.ndarray
        ``int32`` label map of the input's shape, 0 = background, objects 1..N.

    Raises
    ------
    ValueError
        Same input checks as :func:`segment_classical`; an unknown ``objects`` or an even/too small
        ``window`` is named.
    """
    if objects not in PHASE_OBJECTS:
        raise ValueError(f"objects={objects!r}: expected one of {', '.join(PHASE_OBJECTS)}")
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise ValueError(f"window={window!r}: expected an odd integer >= 3")
    _positive("h_fraction", h_fraction)
    img = _checked_float_image(image, axes, "segment_phase_contrast", sigma=sigma, min_size=min_size)

    from scipy import ndimage as ndi
    from skimage.filters import gaussian, threshold_multiotsu, threshold_otsu
    from skimage.morphology import closing, disk, erosion, opening

    if sigma > 0:
        img = gaussian(img, sigma=float(sigma), preserve_range=True)
    if float(img.max()) == float(img.min()):
        return np.zeros(image.shape, np.int32)
    if objects == "dark":
        if len(np.unique(img[:: max(1, img.size // 65536)])) < 3:  # multi-Otsu needs 3 grey levels
            fg = img < threshold_otsu(img)
        else:
            fg = img < threshold_multiotsu(img, classes=3)[0]
        fg = opening(ndi.binary_fill_holes(closing(fg, disk(1))), disk(1))
    else:
        mean = ndi.uniform_filter(img, window)
        std = np.sqrt(np.maximum(ndi.uniform_filter(img * img, window) - mean * mean, 0))
        fg = ndi.binary_fill_holes(closing(std > threshold_otsu(std), disk(2)))
        fg = opening(erosion(fg, disk(window // 2)), disk(2))
    if min_size > 0:
        comp, _ = ndi.label(fg)
        fg = _remove_small(comp, int(min_size)) > 0
    return _distance_watershed(fg, h_fraction, min_size)


def _checked_float_image(image: Any, axes: str, who: str, *, sigma: float, min_size: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    axes = check_axes(axes, image.ndim)
    if axes != "YX":
        raise ValueError(f"axes={axes!r}: {who} accepts only 'YX' (a single 2D plane)")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating) or image.dtype == bool):
        raise ValueError(f"image has dtype {image.dtype}; expected an integer, float or bool grayscale image")
    _positive("sigma", sigma)
    _positive("min_size", min_size, integer=True)
    img = image.astype(np.float32)
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or infinite values")
    return img


def _distance_watershed(fg: np.ndarray, h_fraction: float, min_size: int) -> np.ndarray:
    """Watershed of the foreground's distance transform, seeded by h-maxima with ``h`` =
    ``h_fraction`` x the median component half-width (its largest distance value)."""
    from scipy import ndimage as ndi
    from skimage.filters import gaussian
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    comp, n = ndi.label(fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    dist = ndi.distance_transform_edt(fg)
    half_width = float(np.median(ndi.maximum(dist, comp, np.arange(1, n + 1))))
    # a lightly smoothed distance: pixel-grid ridges along elongated objects are not seeds
    smooth = gaussian(dist, sigma=1.0, preserve_range=True)
    seeds = h_maxima(smooth, max(1.0, h_fraction * half_width)).astype(bool) & fg
    markers, _ = ndi.label(seeds)
    labels = watershed(-dist, markers, mask=fg)
    orphan, _ = ndi.label(fg & (labels == 0))  # components whose maximum fell to the smoothing
    if orphan.max():
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    if min_size > 0:
        labels = _remove_small(labels, int(min_size))
    return relabel_sequential(labels)[0].astype(np.int32)


def _merge_close_markers(markers: np.ndarray, min_distance: int) -> np.ndarray:
    """Give markers whose centroids are closer than ``min_distance`` the same label."""
    from scipy import ndimage as ndi
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = int(markers.max())
    centroids = np.asarray(ndi.center_of_mass(markers > 0, markers, np.arange(1, n + 1)))
    pairs = cKDTree(centroids).query_pairs(r=float(min_distance), output_type="ndarray")
    if len(pairs) == 0:
        return markers
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    lut = np.concatenate([[0], comp + 1])
    return lut[markers]


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects with fewer than ``min_size`` pixels to 0 (labels are kept, not renumbered)."""
    counts = np.bincount(labels.ravel())
    small = counts < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)
