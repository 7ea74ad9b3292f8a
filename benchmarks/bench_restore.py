"""Restoration benchmark: ijtorch Noise2Void vs CAREamics N2V, BM3D and TV, side by side in one run.

The protocol of issue 23: real DSB 2018 fluorescence nuclei (``shared/data/nuclei_dsb2018/train``),
256x256 centre crops scaled to [0, 1] by their 0.1/99.9 percentiles, are the clean ground truth; each
becomes ``poisson(c * 20) / 20 + normal(0, 0.03)`` (seeded). The images are split in two alternating
halves: ``tune`` (where ijtorch's default recipe was chosen) and ``report`` (the default here, never
used to choose anything). On the ``--n`` images of the split, in one run, one after the other, with
the same number of torch threads:

- **ijtorch N2V**: the default recipe of ``ijtorch denoise`` / ``ijtorch Denoise (Noise2Void)`` /
  the server (``DenoiseN2VParams`` epochs and steps, ``TRAINING_DEFAULTS['n2v']``), one model trained
  on all the noisy images, as N2V is used, then applied to each (``denoise_n2v`` with that model);
- **CAREamics N2V** (``careamics`` from PyPI, ``restore_peers.py``): its default N2V configuration,
  patch 64, batch 16, ``--careamics-epochs`` (20) epochs, on the same noisy images;
- **BM3D** (``bm3d`` from PyPI) after the generalized Anscombe transform with the exact unbiased
  inverse (Makitalo & Foi 2013), given the true noise parameters (an oracle advantage);
- **TV** (scikit-image ``denoise_tv_chambolle``), its weight chosen per image without the ground
  truth by J-invariance (``calibrate_denoiser``, 12 weights from 0.01 to 0.5);
- with ``--care``: ijtorch CARE (``train_restoration('care')`` defaults) and CAREamics CARE (its
  default CARE configuration, same patch, batch and epochs) trained on noisy/clean pairs of the
  ``tune`` images, applied to the ``report`` ones.

PSNR/SSIM use CSBDeep's scale-and-shift-invariant normalisation (:mod:`ijtorch.metrics.restoration`).
Times: wall and CPU seconds (this process's, or the peer process's, all threads) for training and for
processing all images. The peers run in their own processes while this one trains ijtorch's model
(CAREamics N2V is started just before it, so the two trainings overlap and share the machine's load);
on a shared machine wall time depends on the other jobs, CPU time much less: compare CPU seconds.

CAREamics pins its own torch, so the peers run in their own environment::

    python3 -m venv --system-site-packages /tmp/peers-venv-restore
    /tmp/peers-venv-restore/bin/pip install careamics==0.3.5 bm3d

Run: ``python3 benchmarks/bench_restore.py [--n 10] [--split report] [--threads 1] [--care]
[--skip n2v,careamics,bm3d,tv] [--n2v-methods blindspot,mask] [--peers-python /tmp/peers-venv-restore/bin/python]``
(CARE alone: ``--care --skip n2v,bm3d,tv``; ``--n2v-methods`` trains ijtorch's recipe once per N2V method). Nothing is asserted; not part of ``make test``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PEAK, READ = 20.0, 0.03  # photons at the brightest pixel; read noise std in units of the clean range
CROP = 256
TV_WEIGHTS = tuple(np.geomspace(0.01, 0.5, 12))  # J-invariance picks one per image (clean range: 0..1)
# tests/unit/test_restore.py::test_tiled_prediction_agrees_with_whole_image (fractions of the 1..99.8 % span)
TILE_TOL_MAX, TILE_TOL_MEAN = 0.02, 0.002


# ----------------------------------------------------------------------------- data
def _scaled(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, [0.1, 99.9])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def _centre(a: np.ndarray, size: int = CROP) -> np.ndarray:
    y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[y0:y0 + size, x0:x0 + size]


def load_split(split: str, n: int) -> list[tuple[str, np.ndarray]]:
    """``(name, clean crop in [0, 1])`` of the ``tune`` (odd) or ``report`` (even) half of the DSB images
    large enough for a crop and not nearly empty; the halves never share an image."""
    import tifffile

    usable = []
    for f in sorted((DATA / "nuclei_dsb2018" / "train" / "images").glob("*.tif")):
        a = tifffile.imread(f)
        if a.ndim == 2 and min(a.shape) >= CROP and np.ptp(np.percentile(_centre(a), [0.1, 99.9])) >= 20:
            usable.append((f.stem, a))
    half = usable[0::2] if split == "report" else usable[1::2]
    if len(half) < n:
        raise SystemExit(f"need {n} usable DSB nuclei images in the {split} half under {DATA}; found {len(half)}")
    return [(name, _scaled(_centre(a))) for name, a in half[:n]]


def degrade(c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(c * PEAK) / PEAK + rng.normal(0, READ, c.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- methods
def tv(noisy: list[np.ndarray]) -> list[np.ndarray]:
    from skimage.restoration import calibrate_denoiser, denoise_tv_chambolle

    out = []
    for x in noisy:
        grid = {"weight": list(TV_WEIGHTS)}
        _, (tested, losses) = calibrate_denoiser(x, denoise_tv_chambolle, grid, extra_output=True)
        out.append(denoise_tv_chambolle(x, **tested[int(np.argmin(losses))]).astype(np.float32))
    return out


def n2v_recipe() -> dict[str, Any]:
    """The Denoise command's defaults (epochs, steps) and ``train_restoration``'s for the rest (``method``:
    Noise2Void's default training for 2D images)."""
    from ijtorch.commands.restore import DenoiseN2VParams
    from ijtorch.tasks.restore import TRAINING_DEFAULTS
    from ijtorch.tasks.restore_train import train_restoration

    p = DenoiseN2VParams()
    sig = inspect.signature(train_restoration).parameters
    return {"epochs": p.epochs, "steps_per_epoch": p.steps, "patch_size": sig["patch_size"].default,
            "method": "mask", **TRAINING_DEFAULTS["n2v"], "mask_fraction": sig["mask_fraction"].default}


def ijtorch_n2v(noisy: list[np.ndarray], work: Path, method: str) -> tuple[list[np.ndarray], list[float]]:
    """Train as ``denoise_n2v`` does (one model on every noisy image, the command's epochs and steps)
    with the N2V ``method``, then apply it with ``denoise_n2v(model=...)``; returns outputs and
    [train wall, CPU, apply wall, CPU]."""
    from ijtorch.commands.restore import DenoiseN2VParams
    from ijtorch.tasks.restore_train import denoise_n2v
    from ijtorch.tasks.restore_train import train_restoration

    p = DenoiseN2VParams()
    t, c = time.perf_counter(), time.process_time()
    model = work / f"n2v-{method}"
    train_restoration("n2v", noisy, None, output=model, axes="YX", epochs=p.epochs, steps_per_epoch=p.steps,
                      n2v_method=method, seed=0, device="cpu", checkpoint_dir=work / f"n2v-{method}-checkpoints",
                      progress_bar=False)
    train = [time.perf_counter() - t, time.process_time() - c]
    t, c = time.perf_counter(), time.process_time()
    out = denoise_n2v(np.stack(noisy), "ZYX", model=model, device="cpu")
    return list(out), train + [time.perf_counter() - t, time.process_time() - c]


def ijtorch_care(train_in: list[np.ndarray], train_gt: list[np.ndarray], noisy: list[np.ndarray],
                 work: Path) -> tuple[list[np.ndarray], list[float]]:
    from ijtorch.tasks.restore import restore
    from ijtorch.tasks.restore_train import train_restoration

    t, c = time.perf_counter(), time.process_time()
    train_restoration("care", train_in, train_gt, output=work / "care", seed=0, device="cpu",
                      checkpoint_dir=work / "care-checkpoints", progress_bar=False)
    train = [time.perf_counter() - t, time.process_time() - c]
    t, c = time.perf_counter(), time.process_time()
    out = [restore(x, "YX", model=work / "care", device="cpu").restored for x in noisy]
    return out, train + [time.perf_counter() - t, time.process_time() - c]


def start_peer(method: str, arrays: dict[str, np.ndarray], args: argparse.Namespace,
               work: Path) -> Callable[[], tuple[list[np.ndarray], list[float]] | str]:
    """Start ``restore_peers.py METHOD`` with the peers' Python (it runs while this process goes on);
    the returned function waits for it and gives its outputs and times, or why there are none."""
    src, dst = work / f"{method}-in.npz", work / f"{method}-out.npz"
    np.savez(src, **arrays)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES="")
    cmd = [args.peers_python, str(ROOT / "benchmarks" / "restore_peers.py"), method, str(src), str(dst),
           "--threads", str(args.threads), "--epochs", str(args.careamics_epochs), "--peak", str(PEAK),
           "--read", str(READ)]
    log = work / f"{method}.log"
    try:
        with log.open("w") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        why = f"not run: {e}"
        return lambda: why

    def result() -> tuple[list[np.ndarray], list[float]] | str:
        code = proc.wait()
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        if code != 0 or not dst.exists():
            return f"failed: {tail[0][:160]}"
        res = np.load(dst)
        return list(res["restored"]), [float(s) for s in res["seconds"]]

    return result


def timed(fn: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], list[float]]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, [0.0, 0.0, time.perf_counter() - t, time.process_time() - c]


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10, help="images of 256x256 to denoise (issue 23 used 20)")
    ap.add_argument("--split", choices=("report", "tune"), default="report")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every method")
    ap.add_argument("--careamics-epochs", type=int, default=20)
    ap.add_argument("--peers-python", default="/tmp/peers-venv-restore/bin/python",
                    help="Python of the environment with careamics and bm3d")
    ap.add_argument("--care", action="store_true", help="also CARE vs CAREamics CARE (pairs of the tune images)")
    ap.add_argument("--skip", default="", help="comma-separated methods to leave out: n2v (both), careamics, bm3d, tv")
    ap.add_argument("--n2v-methods", default="",
                    help="comma-separated N2V trainings (blindspot, mask), each its own row; default: the default one")
    ap.add_argument("--size", type=int, default=0, help="also time restoring a SIZE x SIZE image with the N2V model")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    import torch

    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.ERROR)  # dataset-shift warnings are expected across images
    from ijtorch.metrics.restoration import psnr, ssim

    t_run = time.monotonic()
    images = load_split(args.split, args.n)
    clean = [c for _, c in images]
    rng = np.random.default_rng(2023)
    noisy = [degrade(c, rng) for c in clean]
    r = n2v_recipe()
    methods = [m.strip() for m in args.n2v_methods.split(",") if m.strip()] or [r["method"]]
    rows = {m: "ijtorch N2V" if m == r["method"] else f"ijtorch N2V {m}" for m in methods}
    print(f"ijtorch restoration benchmark (issue 23 protocol) — torch {torch.__version__}, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{len(images)} {args.split} images, {CROP}x{CROP} DSB nuclei crops, Poisson peak {PEAK:g} + Gaussian "
          f"{READ:g}: {', '.join(n[:8] for n, _ in images)}")
    print(f"ijtorch N2V recipe (the Denoise defaults): {r['epochs']} epochs x {r['steps_per_epoch']} steps, batch "
          f"{r['batch_size']} of {r['patch_size']} px, U-Net base {r['base_channels']} depth {r['depth']}, lr "
          f"{r['lr']:g}, " + ("blind-spot network, posterior mean with a noise model estimated per image, "
                              if r["method"] == "blindspot" else f"{100 * r['mask_fraction']:g} % blind-spot pixels, ") +
          f"{'8-fold test-time augmentation' if r.get('test_time_augmentation') else 'one pass'} when applied")
    if set(rows.values()) != {"ijtorch N2V"}:
        from ijtorch.tasks.restore import BLINDSPOT_DEFAULTS

        print("'ijtorch N2V' is the default method (" + r["method"] + "); 'ijtorch N2V <method>' the same recipe "
              "with that training: the blind-spot network (Laine et al. 2019; posterior mean, with "
              f"{BLINDSPOT_DEFAULTS}) or 1 % masked pixels (Krull et al. 2019)")
    results: dict[str, tuple[list[np.ndarray], list[float]] | str] = {"noisy input": (noisy, [0.0] * 4)}
    with tempfile.TemporaryDirectory(prefix="ijtorch-bench-restore-") as tmp:
        work = Path(tmp)
        peers: dict[str, Callable[[], Any]] = {}
        if "n2v" not in skip:
            if "careamics" not in skip:  # started first: the N2V trainings overlap and see the same load
                peers["CAREamics N2V"] = start_peer("careamics-n2v", {"noisy": np.stack(noisy)}, args, work)
            for method, row in rows.items():
                results[row] = ijtorch_n2v(noisy, work, method)
        if "bm3d" not in skip:
            peers["BM3D + GAT"] = start_peer("bm3d", {"noisy": np.stack(noisy)}, args, work)
        if "tv" not in skip:
            results["TV (J-inv.)"] = timed(lambda: tv(noisy))
        if args.care:
            pairs = load_split("tune" if args.split == "report" else "report", args.n)
            train_gt = [c for _, c in pairs]
            train_in = [degrade(c, rng) for c in train_gt]
            if "careamics" not in skip:
                peers["CAREamics CARE"] = start_peer("careamics-care", {
                    "noisy": np.stack(noisy), "train_input": np.stack(train_in), "train_target": np.stack(train_gt)},
                    args, work)
            results["ijtorch CARE"] = ijtorch_care(train_in, train_gt, noisy, work)
        results.update({name: wait() for name, wait in peers.items()})
        if args.size and "ijtorch N2V" in results:
            timing(work / f"n2v-{r['method']}", clean, args.size, rng)

    header = f"{'method':<21} {'PSNR dB':>8} {'SSIM':>6} {'train s (CPU s)':>17} {'apply s (CPU s)':>17}"
    print("\n" + header + "\n" + "-" * len(header))
    scores: dict[str, float] = {}
    for name, res in results.items():
        if isinstance(res, str):
            print(f"{name:<21} {res}")
            continue
        outs, (tw, tc, pw, pc) = res
        scores[name] = float(np.mean([psnr(c, o) for c, o in zip(clean, outs)]))
        s = float(np.mean([ssim(c, o) for c, o in zip(clean, outs)]))
        train = f"{tw:7.1f} ({tc:6.1f})" if tw else ""
        apply = f"{pw:7.1f} ({pc:6.1f})" if pw else ""
        print(f"{name:<21} {scores[name]:8.2f} {s:6.3f} {train:>17} {apply:>17}")

    print()
    theirs = results.get("CAREamics N2V")
    for row in rows.values():
        mine = results.get(row)
        if "BM3D + GAT" in scores and row in scores:
            d = scores[row] - scores["BM3D + GAT"]
            print(f"target {row} >= BM3D + 0.5 dB: {d:+.2f} dB ({'met' if d >= 0.5 else 'NOT met'})")
        if isinstance(theirs, tuple) and isinstance(mine, tuple):
            wall, cpu = mine[1][0] / theirs[1][0], mine[1][1] / theirs[1][1]
            print(f"target {row} training time <= 1.0x CAREamics: {wall:.2f}x wall, {cpu:.2f}x CPU "
                  f"({'met' if max(wall, cpu) <= 1.0 else 'NOT met'}; wall time on a shared machine is noisy)")
    if "ijtorch CARE" in scores and "CAREamics CARE" in scores:
        d = scores["ijtorch CARE"] - scores["CAREamics CARE"]
        print(f"target CARE >= CAREamics CARE: {d:+.2f} dB ({'met' if d >= 0 else 'NOT met'})")
    print(f"total {time.monotonic() - t_run:.0f} s")
    return 0


def timing(model_path: Path, clean: list[np.ndarray], size: int, rng: np.random.Generator) -> None:
    """Seconds to restore a ``size`` x ``size`` image: tiled (256, 512, the default) and untiled, best of
    two interleaved rounds (other jobs on the machine slow single runs down)."""
    from ijtorch.models.restoration import RestorationModel
    from ijtorch.tasks.restore import restore

    mosaic = np.concatenate([np.concatenate(clean[i:i + 2], 1) for i in (0, 2)], 0)  # 512 x 512 of real nuclei
    reps = -(-size // mosaic.shape[0])
    big = degrade(np.tile(mosaic, (reps, reps))[:size, :size], rng)
    model = RestorationModel.load(model_path, device="cpu")
    restore(big[:256, :256], "YX", model=model, device="cpu")  # warm-up
    default_tile = inspect.signature(restore).parameters["tile_size"].default
    runs: list[int | None] = [*sorted({256, 512, default_tile}), None]  # None: untiled
    seconds: dict[int | None, float] = {}
    outputs: dict[int | None, np.ndarray] = {}
    for _ in range(2):
        for tile in runs:
            t = time.perf_counter()
            outputs[tile] = restore(big, "YX", model=model, device="cpu", tile_size=tile or default_tile,
                                    tiled=tile is not None).restored
            seconds[tile] = min(seconds.get(tile, np.inf), time.perf_counter() - t)
    whole = outputs[None]
    span = float(np.percentile(whole, 99.8) - np.percentile(whole, 1))
    print(f"\n{size}x{size} N2V restore on CPU, best of 2; tiles overlap 48 px, linear blending:")
    for tile in runs:
        name = "untiled (one pass)" if tile is None else f"tiles {tile}" + (" (default)" if tile == default_tile else "")
        line = f"  {name:<20} {seconds[tile]:6.2f} s   {seconds[tile] / seconds[default_tile]:5.2f} x the default"
        if tile is not None:
            err = np.abs(outputs[tile] - whole)
            ok = err.max() < TILE_TOL_MAX * span and err.mean() < TILE_TOL_MEAN * span
            line += (f"   vs untiled: max {err.max() / span:.4f}, mean {err.mean() / span:.5f} of the range (test "
                     f"tolerance {TILE_TOL_MAX}/{TILE_TOL_MEAN}: {'within' if ok else 'OUTSIDE'})")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
