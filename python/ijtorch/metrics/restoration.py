"""Restoration metrics with CSBDeep's scale-and-shift-invariant normalisation.

A restored image and its ground truth rarely share an intensity scale (networks work in
normalised units, microscopes have offsets), so, as in CSBDeep (``csbdeep.utils.norm_minmse``,
Weigert et al. 2018), the ground truth is first percentile-normalised (0.1 → 0, 99.9 → 1) and the
prediction is then mapped by the scale and offset that minimise its squared error to it (a
least-squares fit). PSNR, SSIM and NRMSE are computed on that pair with a data range of 1.

Examples
--------
>>> import numpy as np
>>> from ijtorch.metrics.restoration import psnr
>>> gt = np.linspace(0, 1, 64 * 64).reshape(64, 64)
>>> psnr(gt, 3 * gt + 7) > 100  # an affine copy is a perfect restoration
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalize_minmse", "psnr", "ssim", "nrmse", "restoration_metrics"]


def _check(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt has shape {gt.shape} but pred has shape {pred.shape}; they must match")
    if gt.ndim not in (2, 3):
        raise ValueError(f"gt has {gt.ndim} dimensions; expected a 2D or 3D image")
    for name, a in (("gt", gt), ("pred", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise TypeError(f"{name} has dtype {a.dtype}; expected an integer or float image")
    return gt, pred


def normalize_minmse(gt: np.ndarray, pred: np.ndarray, *, low: float = 0.1,
                     high: float = 99.9) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-normalise ``gt``, then fit ``pred`` to it by least-squares scale and offset.

    Returns
    -------
    gt_n, pred_n : ndarray of float64
        ``gt_n = (gt - p_low) / (p_high - p_low)``; ``pred_n = a * pred + b`` minimising
        ``sum((gt_n - pred_n) ** 2)``.
    """
    gt, pred = _check(gt, pred)
    if not 0 <= low < high <= 100:
        raise ValueError(f"low={low!r}, high={high!r}: expected 0 <= low < high <= 100")
    g = gt.astype(np.float64)
    lo, hi = np.percentile(g, [low, high])
    g = (g - lo) / max(hi - lo, 1e-20)
    x = pred.astype(np.float64)
    xc = x - x.mean()
    var = float((xc ** 2).mean())
    scale = float((xc * (g - g.mean())).mean() / var) if var > 0 else 0.0
    return g, scale * xc + g.mean()


def psnr(gt: np.ndarray, pred: np.ndarray, *, normalize: bool = True, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for a perfect match).

    With ``normalize=True`` (default) the pair is first put through :func:`normalize_minmse` and
    ``data_range`` defaults to 1; otherwise ``data_range`` defaults to ``gt.max() - gt.min()``.
    """
    g, x = normalize_minmse(gt, pred) if normalize else tuple(a.astype(np.float64) for a in _check(gt, pred))
    rng = float(data_range) if data_range is not None else (1.0 if normalize else float(g.max() - g.min()))
    mse = float(((g - x) ** 2).mean())
    if mse == 0:
        return float("inf")
    return float(10 * np.log10(rng ** 2 / mse))


def ssim(gt: np.ndarray, pred: np.ndarray, *, normalize: bool = True, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image's ``structural_similarity``, 7-pixel window).

    Normalisation and ``data_range`` as in :func:`psnr`.
    """
    from skimage.metrics import structural_similarity

    g, x = normalize_minmse(gt, pred) if normalize else tuple(a.astype(np.float64) for a in _check(gt, pred))
    rng = float(data_range) if data_range is not None else (1.0 if normalize else float(g.max() - g.min()))
    return float(structural_similarity(g, x, data_range=rng))


def nrmse(gt: np.ndarray, pred: np.ndarray, *, normalize: bool = True) -> float:
    """Root-mean-square error divided by the data range (1 after :func:`normalize_minmse`)."""
    g, x = normalize_minmse(gt, pred) if normalize else tuple(a.astype(np.float64) for a in _check(gt, pred))
    rng = 1.0 if normalize else float(g.max() - g.min())
    return float(np.sqrt(((g - x) ** 2).mean()) / (rng if rng > 0 else 1.0))


def restoration_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"psnr", "ssim", "nrmse"}`` with scale-and-shift-invariant normalisation."""
    return {"psnr": psnr(gt, pred), "ssim": ssim(gt, pred), "nrmse": nrmse(gt, pred)}
