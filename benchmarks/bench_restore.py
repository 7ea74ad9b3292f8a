"""Restoration benchmark: PSNR/SSIM on real clean images with simulated Poisson-Gaussian noise.

Clean references are real images from ``shared/data``: DSB 2018 fluorescence nuclei and Usiigaci
phase-contrast cells, intensities scaled to [0, 1] by their 0.1/99.9 percentiles. At each noise level
an image ``c`` becomes ``poisson(c * peak) / peak + normal(0, read)``. Scored on the test images
(256x256 centre crops of DSB images spread over the whole set and of two cells images), in one run:

- the noisy input;
- scikit-image's ``denoise_nl_means`` (fast mode, 5x5 patches, 6 px search, ``sigma`` from
  ``estimate_sigma``), ``denoise_wavelet`` (BayesShrink, soft, ``rescale_sigma``) and
  ``denoise_tv_chambolle``. Their strength (``h``, ``sigma``, ``weight``) is chosen per image,
  without the ground truth, by scikit-image's J-invariance calibration (``calibrate_denoiser``, as in
  its "Calibrating denoisers using J-invariance" tutorial) over multiples of the ``estimate_sigma``
  noise estimate; the plain denoiser is then run with the best value. This is the same information
  Noise2Void gets (the noisy image alone), so the comparison is fair;
- ijtorch Noise2Void, trained on the noisy test images themselves with the default recipe of
  ``ijtorch denoise`` / ``ijtorch Denoise (Noise2Void)`` (:func:`ijtorch.tasks.restore.denoise_n2v`),
  as a user would;
- ijtorch CARE with the default recipe of ``ijtorch train-restoration care``, trained on noisy/clean
  pairs of *other* images (held out from the test set) at the same noise level.

PSNR/SSIM use CSBDeep's scale-and-shift-invariant normalisation (:mod:`ijtorch.metrics.restoration`).

Training is bounded: ``--minutes`` is the whole run's budget; before each training the remaining
budget is shared among the models still to train (the default level's, where the targets are judged,
get twice the share) and, when the recipe's steps would not fit (speed measured on the spot), fewer
steps per epoch are used (printed). On a quiet 2-core machine the full recipes fit in 12 minutes.
Trained models are cached in ``$TMPDIR/ijtorch-bench-restore/<key>`` (key: every setting, the image
names and the source of the restoration code), never in the repository; ``--no-cache`` retrains.

Then the CPU time to restore a 2048x2048 image with the default level's N2V model: tiled with 256 and
512 px tiles (48 px overlap, linearly blended; ``restore``'s default is 256) and untiled, best of two
rounds, with the tiled-vs-untiled difference checked against the tolerance of
``tests/unit/test_restore.py``. Nothing is asserted; not part of ``make test``.

Run: ``nice -n 10 python3 benchmarks/bench_restore.py [--minutes 12] [--levels default,strong,mild]
[--threads 2] [--no-cache]``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
# name -> (photons at the brightest pixel, read noise std in units of the clean range)
LEVELS = {"default": (10.0, 0.05), "strong": (3.0, 0.1), "mild": (30.0, 0.02)}
CROP = 256
N_TEST_DSB, N_TEST_CELLS = 6, 2
N_TRAIN_DSB = 16
CALIBRATION_FACTORS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # x estimate_sigma
# tests/unit/test_restore.py::test_tiled_prediction_agrees_with_whole_image (fractions of the 1..99.8 % span)
TILE_TOL_MAX, TILE_TOL_MEAN = 0.02, 0.002


# ----------------------------------------------------------------------------- data
def _scaled(a: np.ndarray) -> np.ndarray | None:
    a = a.astype(np.float32)
    lo, hi = np.percentile(a, [0.1, 99.9])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32)


def _centre(a: np.ndarray, size: int = CROP) -> np.ndarray:
    y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[y0:y0 + size, x0:x0 + size]


def load_images() -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """``(test, train)`` lists of ``(name, clean image in [0, 1])``; no image is in both."""
    import tifffile

    dsb = []
    for f in sorted((DATA / "nuclei_dsb2018" / "train" / "images").glob("*.tif")):
        a = tifffile.imread(f)
        lo, hi = np.percentile(_centre(a), [0.1, 99.9])
        if min(a.shape) >= CROP and hi - lo >= 20:  # skip nearly empty (dim, mostly background) crops
            dsb.append((f.stem, a))
    cells = [(f.stem, tifffile.imread(f)) for f in sorted((DATA / "cells_usiigaci_phase" / "train" / "images").glob("*.tif"))]
    if len(dsb) < N_TEST_DSB + 2 or len(cells) < N_TEST_CELLS + 1:
        raise SystemExit(f"need the DSB nuclei and Usiigaci cells images under {DATA}")
    step = len(dsb) // N_TEST_DSB
    test_dsb = dsb[::step][:N_TEST_DSB]
    names = {n for n, _ in test_dsb}
    rest = [x for x in dsb if x[0] not in names]
    train_dsb = rest[:: max(1, len(rest) // N_TRAIN_DSB)][:N_TRAIN_DSB]
    test = [(n, _scaled(_centre(a))) for n, a in test_dsb + cells[:N_TEST_CELLS]]
    train = [(n, _scaled(a)) for n, a in train_dsb + cells[N_TEST_CELLS:]]  # whole images: more to learn from
    return test, train


def degrade(c: np.ndarray, peak: float, read: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(c * peak) / peak + rng.normal(0, read, c.shape)).astype(np.float32)


# ----------------------------------------------------------------------------- classical
def classical_methods() -> dict[str, Callable[[np.ndarray], tuple[np.ndarray, float]]]:
    """``name -> fn(noisy) -> (denoised, chosen strength / estimated sigma)``; {} without PyWavelets."""
    try:
        import pywt  # noqa: F401  (denoise_wavelet needs PyWavelets)
    except ImportError:
        print("(PyWavelets not installed: skipping the scikit-image baselines; pip install PyWavelets)")
        return {}
    from skimage.restoration import (calibrate_denoiser, denoise_nl_means, denoise_tv_chambolle, denoise_wavelet,
                                     estimate_sigma)

    def calibrated(fn: Callable[..., np.ndarray], key: str, with_sigma: bool = False, **fixed: Any):
        def run(x: np.ndarray) -> tuple[np.ndarray, float]:
            sigma = float(estimate_sigma(x))
            kw = dict(fixed, sigma=sigma) if with_sigma else dict(fixed)
            grid = {key: [f * sigma for f in CALIBRATION_FACTORS]}
            _, (tested, losses) = calibrate_denoiser(x, lambda im, **p: fn(im, **kw, **p), grid, extra_output=True)
            best = tested[int(np.argmin(losses))]
            return fn(x, **kw, **best).astype(np.float32), best[key] / sigma

        return run

    return {
        "NL-means": calibrated(denoise_nl_means, "h", with_sigma=True, fast_mode=True, patch_size=5, patch_distance=6),
        "wavelet": calibrated(denoise_wavelet, "sigma", method="BayesShrink", mode="soft", rescale_sigma=True),
        "TV": calibrated(denoise_tv_chambolle, "weight"),
    }


# ----------------------------------------------------------------------------- training budget
def recipes() -> dict[str, dict[str, Any]]:
    """Default training settings: N2V's are ``denoise_n2v``'s (the Denoise command's and CLI's recipe),
    CARE's are ``train_restoration``'s (``ijtorch train-restoration care``)."""
    from ijtorch.tasks.restore import TRAINING_DEFAULTS, denoise_n2v, train_restoration

    def defaults(fn: Callable[..., Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: inspect.signature(fn).parameters[k].default for k in keys}

    n2v = {**defaults(denoise_n2v, ("epochs", "steps_per_epoch", "patch_size")), **TRAINING_DEFAULTS["n2v"],
           **defaults(train_restoration, ("mask_fraction", "mask_radius"))}
    care = {**defaults(train_restoration, ("epochs", "steps_per_epoch", "patch_size")), **TRAINING_DEFAULTS["care"]}
    return {"n2v": n2v, "care": care}


def describe(r: dict[str, Any]) -> str:
    text = (f"{r['epochs']} epochs x {r['steps_per_epoch']} steps, batch {r['batch_size']} of {r['patch_size']} px, "
            f"U-Net base {r['base_channels']} depth {r['depth']}, lr {r['lr']:g}")
    if "mask_fraction" in r:
        text += f", {100 * r['mask_fraction']:g} % blind-spot pixels (radius {r['mask_radius']})"
    return text


def seconds_per_step(r: dict[str, Any]) -> float:
    """Measured time of one training step (forward, backward, update) of recipe ``r``'s U-Net."""
    import torch

    from ijtorch.models.unet import UNet

    net = UNet(1, 1, ndim=2, base_channels=r["base_channels"], depth=r["depth"], norm="none")
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    x = torch.rand(r["batch_size"], 1, r["patch_size"], r["patch_size"])
    times = []
    for _ in range(4):
        t = time.perf_counter()
        opt.zero_grad()
        ((net(x) - x) ** 2).mean().backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) * 1.15  # + masking, batching and validation


def cache_key(**settings: Any) -> str:
    src = ROOT / "python" / "ijtorch"
    code = b"".join((src / p).read_bytes() for p in ("tasks/restore.py", "models/restoration.py", "models/unet.py"))
    blob = json.dumps(settings, sort_keys=True, default=str).encode() + hashlib.sha256(code).digest()
    return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=12.0, help="budget for the whole run (training is bounded by it)")
    ap.add_argument("--levels", default="default,strong,mild", help=f"comma-separated, from {','.join(LEVELS)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="edge of the image for the CPU timing (0: skip)")
    ap.add_argument("--no-cache", action="store_true", help="retrain even when a cached model matches")
    args = ap.parse_args(argv)
    levels = [s.strip() for s in args.levels.split(",") if s.strip()]
    bad = [s for s in levels if s not in LEVELS]
    if bad or not levels:
        ap.error(f"--levels {args.levels!r}: choose from {', '.join(LEVELS)}")
    t_run = time.monotonic()
    deadline = t_run + 60 * args.minutes
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # dataset-shift warnings are expected across images
    from ijtorch.metrics.restoration import psnr, ssim
    from ijtorch.tasks.restore import denoise_n2v, restore, train_restoration

    test, train = load_images()
    test_c = [c for _, c in test]
    rec = recipes()
    cache_root = Path(tempfile.gettempdir()) / "ijtorch-bench-restore"
    print(f"ijtorch restoration benchmark — torch {torch.__version__}, {args.threads} CPU threads, budget "
          f"{args.minutes:g} min")
    print(f"test: {len(test)} crops {CROP}x{CROP} ({N_TEST_DSB} DSB nuclei, {N_TEST_CELLS} phase-contrast cells: "
          f"{', '.join(n for n, _ in test)}); CARE trains on {len(train)} other images")
    print(f"N2V (denoise_n2v defaults): {describe(rec['n2v'])}")
    print(f"CARE (train_restoration defaults): {describe(rec['care'])}")
    rng = np.random.default_rng(2024)
    methods = classical_methods()
    rows: dict[str, dict[str, tuple[float, float, float]]] = {}
    # the targets are judged at the default level: its two models get twice the share of the others
    weights = [2.0 if name == "default" else 1.0 for name in levels for _ in ("n2v", "care")]
    timing_reserve = 120.0 if args.size else 0.0
    n2v_default_model: Path | None = None
    header = f"{'level':<24} {'method':<14} {'PSNR dB':>8} {'SSIM':>6} {'dPSNR':>7} {'s/img':>7}  notes"
    print("\n" + header + "\n" + "-" * (len(header) + 20))

    def train_steps(kind: str) -> tuple[int, float]:
        """Steps per epoch that fit this model's share of the remaining budget (the recipe's at most),
        and a hard time limit (1.5 x the share: the speed can drop while it trains)."""
        left = deadline - time.monotonic() - timing_reserve - 15 * len(weights)  # baselines, scoring
        share = left * weights[0] / sum(weights)
        weights.pop(0)
        r = rec[kind]
        fit = int(share / (r["epochs"] * seconds_per_step(r)))
        return int(np.clip(fit, 5, r["steps_per_epoch"])), max(30.0, 1.5 * share)

    def steps_note(path: Path, kind: str) -> str:
        cfg = json.loads((path / "config.json").read_text())["training"]
        done, full = cfg["epochs_run"] * cfg["steps_per_epoch"], rec[kind]["epochs"] * rec[kind]["steps_per_epoch"]
        return f", {done} steps" + ("" if done >= full else f" (recipe: {full}; time-bounded)")

    for name in levels:
        peak, read = LEVELS[name]
        label = f"{name} (peak {peak:g}, read {read:g})"
        noisy = [degrade(c, peak, read, rng) for c in test_c]
        noisy_train = [degrade(c, peak, read, rng) for _, c in train]
        outputs: dict[str, tuple[list[np.ndarray], float, str]] = {"noisy input": (noisy, 0.0, "")}
        for key, fn in methods.items():
            t = time.perf_counter()
            res = [fn(x) for x in noisy]
            strengths = [s for _, s in res]
            outputs[key] = ([o for o, _ in res], (time.perf_counter() - t) / len(noisy),
                            f"calibrated {min(strengths):g}..{max(strengths):g} x sigma")

        # Noise2Void: the Denoise command's function on the stack of noisy test images
        steps, limit = train_steps("n2v")
        key = cache_key(kind="n2v", level=(peak, read), steps=steps, recipe=rec["n2v"], names=[n for n, _ in test])
        path = cache_root / f"n2v-{key}"
        stack = np.stack(noisy)
        t = time.perf_counter()
        if (path / "config.json").exists() and not args.no_cache:
            note = "cached model"
        else:
            denoise_n2v(stack, "ZYX", steps_per_epoch=steps, save_to=path, device="cpu", time_limit_s=limit)
            note = f"trained {time.perf_counter() - t:.0f} s"
        note += steps_note(path, "n2v")
        t = time.perf_counter()
        out = denoise_n2v(stack, "ZYX", model=path, device="cpu")
        outputs["ijtorch N2V"] = (list(out), (time.perf_counter() - t) / len(noisy), note)
        if name == "default":
            n2v_default_model = path

        # CARE, default recipe: supervised on noisy/clean pairs of the other images
        steps, limit = train_steps("care")
        key = cache_key(kind="care", level=(peak, read), steps=steps, recipe=rec["care"], names=[n for n, _ in train])
        path = cache_root / f"care-{key}"
        t = time.perf_counter()
        if (path / "config.json").exists() and not args.no_cache:
            note = "cached model"
        else:
            with tempfile.TemporaryDirectory(prefix="ijtorch-care-") as ckpt:
                train_restoration("care", noisy_train, [c for _, c in train], output=path, steps_per_epoch=steps,
                                  seed=0, device="cpu", progress_bar=False, checkpoint_dir=ckpt, time_limit_s=limit)
            note = f"trained {time.perf_counter() - t:.0f} s"
        note += steps_note(path, "care")
        t = time.perf_counter()
        care = [restore(x, "YX", model=path, device="cpu").restored for x in noisy]
        outputs["ijtorch CARE"] = (care, (time.perf_counter() - t) / len(noisy), note)

        base = float(np.mean([psnr(c, x) for c, x in zip(test_c, noisy)]))
        rows[name] = {}
        for i, (key, (outs, sec, note)) in enumerate(outputs.items()):
            p = float(np.mean([psnr(c, o) for c, o in zip(test_c, outs)]))
            s = float(np.mean([ssim(c, o) for c, o in zip(test_c, outs)]))
            rows[name][key] = (p, s, sec)
            print(f"{label if i == 0 else '':<24} {key:<14} {p:8.2f} {s:6.3f} {p - base:+7.2f} {sec:7.2f}  {note}")
        sys.stdout.flush()

    # ------------------------------------------------------------------ targets
    print()
    if "default" in rows:
        d = rows["default"]
        gain = d["ijtorch N2V"][0] - d["noisy input"][0]
        classical = {k: v for k, v in d.items() if k in methods}
        best_k = max(classical, key=lambda k: classical[k][0]) if classical else None
        t1 = gain >= 6.0
        t2 = best_k is not None and d["ijtorch N2V"][0] > classical[best_k][0]
        t3 = d["ijtorch CARE"][0] >= d["ijtorch N2V"][0]
        mark = {True: "met", False: "NOT met"}
        print(f"targets at the default level: N2V {gain:+.2f} dB over the input (>= +6 dB: {mark[t1]}); "
              + (f"N2V {d['ijtorch N2V'][0]:.2f} vs best classical {best_k} {classical[best_k][0]:.2f} dB "
                 f"(above every classical baseline: {mark[t2]}); " if best_k else "no classical baselines; ")
              + f"CARE {d['ijtorch CARE'][0]:.2f} >= N2V {d['ijtorch N2V'][0]:.2f} dB: {mark[t3]}")
    else:
        print("targets are defined at the default level (not run: add it to --levels)")
    for name in rows:
        if name != "default":
            d = rows[name]
            best = max((k for k in d if k in methods), key=lambda k: d[k][0], default=None)
            if best:
                print(f"  {name}: N2V {d['ijtorch N2V'][0] - d[best][0]:+.2f} dB vs best classical ({best}), "
                      f"CARE {d['ijtorch CARE'][0] - d['ijtorch N2V'][0]:+.2f} dB vs N2V")

    # ------------------------------------------------------------------ 2048 x 2048 on CPU
    if args.size and n2v_default_model is not None:
        timing(n2v_default_model, test_c, args.size, args.threads, rng)
    elif args.size:
        print("\n(2048x2048 timing uses the default level's N2V model: add 'default' to --levels)")
    print(f"\ntotal {time.monotonic() - t_run:.0f} s (budget {60 * args.minutes:.0f} s)")
    return 0


def timing(model_path: Path, test_c: list[np.ndarray], size: int, threads: int, rng: np.random.Generator) -> None:
    """Seconds to restore a ``size`` x ``size`` image: tiled (256, 512, the default) and untiled, best of
    two interleaved rounds (other jobs on the machine slow single runs down)."""
    from ijtorch.models.restoration import RestorationModel
    from ijtorch.tasks.restore import restore

    mosaic = np.concatenate([np.concatenate(test_c[i:i + 2], 1) for i in (0, 2)], 0)  # 512 x 512 of real nuclei
    reps = -(-size // mosaic.shape[0])
    big = degrade(np.tile(mosaic, (reps, reps))[:size, :size], *LEVELS["default"], rng)
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
    n_par = sum(p.numel() for p in model.net.parameters())
    print(f"\n{size}x{size} N2V restore on CPU ({threads} threads, U-Net base {model.net.config['base_channels']} "
          f"depth {model.net.config['depth']}, {n_par} parameters), best of 2; tiles overlap 48 px, linear blending:")
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
