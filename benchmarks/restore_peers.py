"""The peers of ``bench_restore.py``, run in their own interpreter: CAREamics N2V / CARE and BM3D.

CAREamics pins its own torch (and torchvision) and BM3D ships its own binaries, so they live in a
separate virtual environment and never in ijtorch's; ``bench_restore.py`` runs this file with that
environment's Python (``--peers-python``) and exchanges arrays through ``.npz`` files. Nothing here
imports ijtorch.

One call = one method on a stack of images::

    python restore_peers.py METHOD IN.npz OUT.npz [--threads 1] [--epochs 20] [--peak 20 --read 0.03]

``IN.npz`` holds ``noisy`` (N, Y, X) float32, plus ``train_input`` / ``train_target`` for ``care``.
``OUT.npz`` gets ``restored`` (N, Y, X) and ``seconds`` = [train wall, train CPU, predict wall,
predict CPU] (CPU time of this process and its threads; CAREamics runs its data loading in-process).

Methods
-------
``careamics-n2v``
    CAREamics' ``create_advanced_n2v_config`` defaults (U-Net depth 2, 32 channels, 0.2 % masked
    pixels, Adam + ReduceLROnPlateau) with patch 64, batch 16, ``--epochs`` epochs, trained on the noisy
    images themselves, as N2V is used; data loading in the main process (``num_workers=0``).
``careamics-care``
    CAREamics' ``create_advanced_care_config`` on ``train_input`` -> ``train_target`` pairs, same patch,
    batch and epochs; applied to ``noisy``.
``bm3d``
    Generalized Anscombe transform for Poisson-Gaussian noise (the true ``--peak`` and ``--read`` are
    given: an oracle advantage no learned method gets), ``bm3d.bm3d`` with unit noise, and the exact
    unbiased inverse of Makitalo & Foi (2013), computed numerically (below).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


# ----------------------------------------------------------------------------- GAT
def gat(z: np.ndarray, sigma: float) -> np.ndarray:
    """Generalized Anscombe transform of Poisson(lambda) + N(0, sigma^2) data (unit gain, in counts)."""
    return 2.0 * np.sqrt(np.maximum(z + 3.0 / 8.0 + sigma ** 2, 0.0))


def gat_exact_unbiased_inverse(d: np.ndarray, sigma: float) -> np.ndarray:
    """Exact unbiased inverse (Makitalo & Foi, IEEE TIP 2013): the ``lambda`` whose expected transform
    ``E[gat(Poisson(lambda) + N(0, sigma^2))]`` equals ``d``. The expectation is computed on a grid of
    ``lambda`` (Poisson sum x Gauss-Hermite quadrature for the Gaussian part) and inverted by monotone
    interpolation; beyond the grid the asymptotic closed form ``d^2 / 4 - 1/8 - sigma^2`` is used."""
    lam_max = max(float(np.max(d)) ** 2 / 4.0 + 10.0, 20.0)
    lam = np.concatenate([np.linspace(0, 2, 201)[:-1], np.geomspace(2, lam_max, 600)])
    k = np.arange(0, int(lam_max + 12 * np.sqrt(lam_max) + 20))
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)  # E over N(0, 1): sum(w f(x)) / sqrt(2 pi)
    weights = weights / weights.sum()
    f_k = (gat(k[:, None] + sigma * nodes[None, :], sigma) * weights[None, :]).sum(1)  # E over the Gaussian
    from scipy.stats import poisson

    expected = poisson.pmf(k[None, :], lam[:, None]) @ f_k
    expected = np.maximum.accumulate(expected)  # strictly monotone up to rounding
    out = np.interp(d, expected, lam)
    big = d > expected[-1]
    out[big] = d[big] ** 2 / 4.0 - 1.0 / 8.0 - sigma ** 2
    return np.maximum(out, 0.0)


def run_bm3d(noisy: np.ndarray, peak: float, read: float) -> np.ndarray:
    import bm3d

    sigma = read * peak  # read noise in photon counts
    out = []
    for x in noisy:
        d = bm3d.bm3d(gat(x.astype(np.float64) * peak, sigma), sigma_psd=1.0)
        out.append(gat_exact_unbiased_inverse(d, sigma) / peak)
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------- CAREamics
def _careamist(kind: str, epochs: int, work: str, seed: int):
    from careamics import CAREamist
    from careamics.config import create_advanced_care_config, create_advanced_n2v_config

    factory = create_advanced_n2v_config if kind == "n2v" else create_advanced_care_config
    config = factory(experiment_name=f"bench_{kind}", data_type="array", axes="SYX", patch_size=[64, 64],
                     batch_size=16, num_epochs=epochs, num_workers=0, seed=seed + 1,  # CAREamics wants a seed > 0
                     trainer_params={"accelerator": "cpu", "enable_model_summary": False})
    return CAREamist(config, work_dir=work, enable_progress_bar=False)


def run_careamics(kind: str, data: dict[str, np.ndarray], epochs: int, seed: int) -> tuple[np.ndarray, list[float]]:
    noisy = data["noisy"].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="careamics-bench-") as work:
        careamist = _careamist(kind, epochs, work, seed)
        t, c = time.perf_counter(), time.process_time()
        if kind == "n2v":
            careamist.train(train_data=noisy)
        else:
            careamist.train(train_data=data["train_input"].astype(np.float32),
                            train_data_target=data["train_target"].astype(np.float32))
        train = [time.perf_counter() - t, time.process_time() - c]
        t, c = time.perf_counter(), time.process_time()
        preds, _ = careamist.predict(noisy, axes="SYX", data_type="array")
        predict = [time.perf_counter() - t, time.process_time() - c]
    out = np.concatenate([np.asarray(p, np.float32).reshape(-1, *noisy.shape[1:]) for p in preds])
    return out, train + predict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("method", choices=("careamics-n2v", "careamics-care", "bm3d"))
    ap.add_argument("inputs")
    ap.add_argument("output")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak", type=float, default=20.0)
    ap.add_argument("--read", type=float, default=0.03)
    args = ap.parse_args(argv)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    data = dict(np.load(args.inputs))
    if args.method == "bm3d":
        t, c = time.perf_counter(), time.process_time()
        restored = run_bm3d(data["noisy"], args.peak, args.read)
        seconds = [0.0, 0.0, time.perf_counter() - t, time.process_time() - c]
    else:
        import torch

        torch.set_num_threads(args.threads)
        restored, seconds = run_careamics(args.method.split("-")[1], data, args.epochs, args.seed)
    tmp = args.output + ".part.npz"
    np.savez(tmp, restored=restored, seconds=np.asarray(seconds))
    os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
