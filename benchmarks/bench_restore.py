"""Restoration benchmark: PSNR/SSIM on real clean images with simulated Poisson-Gaussian noise.

Clean references are real DSB 2018 fluorescence images (``shared/data/nuclei_dsb2018/train``,
centre crops of 256x256, intensities scaled to [0, 1]). At each noise level an image ``c`` becomes
``poisson(c * peak) / peak + normal(0, read)``. Scored on the held-out test images (never used to
train CARE), in the same run:

- the noisy input;
- scikit-image ``denoise_nl_means`` (h = 0.8 * estimated sigma, fast mode, 5x5 patches, 6 px
  search), ``denoise_wavelet`` (BayesShrink, soft, ``rescale_sigma``) and
  ``denoise_tv_chambolle`` (weight = estimated sigma);
- ijtorch Noise2Void, trained on the noisy test images themselves (self-supervised, as a user would);
- ijtorch CARE, trained on noisy/clean pairs of the *other* images at the same noise level.

PSNR/SSIM use CSBDeep's scale-and-shift-invariant normalisation (:mod:`ijtorch.metrics_restoration`).
Then the CPU time of restoring one 2048x2048 image (tiled, 512 px tiles, 48 px overlap) is compared
with a raw forward pass of the same network over the whole image. Nothing is asserted; not part of
``make test``.

Run: ``python benchmarks/bench_restore.py [--threads T] [--steps S] [--levels N]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei_dsb2018" / "train" / "images"
LEVELS = ((30.0, 0.02), (10.0, 0.05), (3.0, 0.1))  # (photons at the brightest pixel, read noise std)


def load_clean(n: int, size: int = 256) -> list[np.ndarray]:
    import tifffile

    out = []
    for f in sorted(DATA.glob("*.tif")):
        a = tifffile.imread(f).astype(np.float32)
        if min(a.shape) < size:
            continue
        y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
        a = a[y0:y0 + size, x0:x0 + size]
        lo, hi = np.percentile(a, [0.1, 99.9])
        if hi - lo < 20:  # skip nearly empty crops
            continue
        out.append(np.clip((a - lo) / (hi - lo), 0, 1))
        if len(out) == n:
            break
    return out


def degrade(c: np.ndarray, peak: float, read: float, rng: np.random.Generator) -> np.ndarray:
    return (rng.poisson(c * peak) / peak + rng.normal(0, read, c.shape)).astype(np.float32)


def classical_methods() -> dict:
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, denoise_wavelet, estimate_sigma

    def nlm(x: np.ndarray) -> np.ndarray:
        s = float(estimate_sigma(x))
        return denoise_nl_means(x, h=0.8 * s, sigma=s, fast_mode=True, patch_size=5, patch_distance=6)

    methods = {
        "nl_means": nlm,
        "wavelet": lambda x: denoise_wavelet(x, method="BayesShrink", mode="soft", rescale_sigma=True),
        "tv_chambolle": lambda x: denoise_tv_chambolle(x, weight=float(estimate_sigma(x))),
    }
    try:
        import pywt  # noqa: F401  (scikit-image's estimate_sigma and denoise_wavelet need PyWavelets)
    except ImportError:
        print("(PyWavelets not installed: skipping nl_means, wavelet and tv_chambolle; pip install PyWavelets)")
        return {}
    return methods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=120, help="training steps per model (batch 8, 64 px patches)")
    ap.add_argument("--levels", type=int, default=3, help="number of noise levels (1..3)")
    ap.add_argument("--n-train", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)  # dataset-shift warnings are expected across images
    from ijtorch.metrics_restoration import psnr, ssim
    from ijtorch.tasks.restore import restore, train_restoration

    clean = load_clean(args.n_train + args.n_test)
    train_c, test_c = clean[: args.n_train], clean[args.n_train:]
    print(f"ijtorch restoration benchmark — torch {torch.__version__}, {args.threads} CPU threads, "
          f"{len(train_c)} train / {len(test_c)} test real DSB crops of 256x256, {args.steps} training steps per model")
    epochs = 6
    spe = max(1, args.steps // epochs)
    common = dict(epochs=epochs, steps_per_epoch=spe, batch_size=8, patch_size=64, base_channels=16, depth=2,
                  lr=2e-3, device="cpu", progress_bar=False)
    rng = np.random.default_rng(2024)
    header = f"{'peak':>5} {'read':>5}  {'method':<14} {'PSNR dB':>8} {'SSIM':>6} {'dPSNR':>6} {'s/img':>7}"
    print(header)
    print("-" * len(header))
    care_path = None
    with tempfile.TemporaryDirectory() as tmp:
        for peak, read in LEVELS[: args.levels]:
            noisy_test = [degrade(c, peak, read, rng) for c in test_c]
            noisy_train = [degrade(c, peak, read, rng) for c in train_c]
            outputs: dict[str, list[np.ndarray]] = {"noisy input": noisy_test}
            times: dict[str, float] = {"noisy input": 0.0}
            for key, fn in classical_methods().items():
                t = time.perf_counter()
                outputs[key] = [fn(x) for x in noisy_test]
                times[key] = (time.perf_counter() - t) / len(noisy_test)
            t = time.perf_counter()
            train_restoration("n2v", noisy_test, None, output=Path(tmp) / "n2v", seed=0, **common)
            n2v_train = time.perf_counter() - t
            t = time.perf_counter()
            outputs["ijtorch N2V"] = [restore(x, "YX", model=Path(tmp) / "n2v", device="cpu").restored for x in noisy_test]
            times["ijtorch N2V"] = (time.perf_counter() - t) / len(noisy_test)
            t = time.perf_counter()
            train_restoration("care", noisy_train, train_c, output=Path(tmp) / f"care{peak}", seed=0, **common)
            care_train = time.perf_counter() - t
            care_path = Path(tmp) / f"care{peak}"
            t = time.perf_counter()
            outputs["ijtorch CARE"] = [restore(x, "YX", model=care_path, device="cpu").restored for x in noisy_test]
            times["ijtorch CARE"] = (time.perf_counter() - t) / len(noisy_test)
            base = np.mean([psnr(c, x) for c, x in zip(test_c, noisy_test)])
            for key, outs in outputs.items():
                p = np.mean([psnr(c, o) for c, o in zip(test_c, outs)])
                s = np.mean([ssim(c, o) for c, o in zip(test_c, outs)])
                print(f"{peak:5.0f} {read:5.2f}  {key:<14} {p:8.2f} {s:6.3f} {p - base:+6.2f} {times[key]:7.3f}")
            print(f"{'':12} (training: N2V {n2v_train:.0f} s, CARE {care_train:.0f} s)")
            sys.stdout.flush()

        # ---------------------------------------------------------------- 2048 x 2048 timing
        from ijtorch.models.restoration import RestorationModel

        big = np.tile(np.concatenate([np.concatenate(test_c[:2], 1)] * 2, 0), (4, 4))[:2048, :2048]
        big = degrade(big, 10.0, 0.05, rng)
        model = RestorationModel.load(care_path, device="cpu")
        restore(big[:256, :256], "YX", model=model, device="cpu")  # warm-up
        t = time.perf_counter()
        r = restore(big, "YX", model=model, device="cpu")
        t_tiled = time.perf_counter() - t
        x = torch.from_numpy(model.normalize(big)[0][None, None])
        t = time.perf_counter()
        with torch.inference_mode():
            model.net(x)
        t_raw = time.perf_counter() - t
        tv = classical_methods().get("tv_chambolle")
        t = time.perf_counter()
        if tv is not None:
            tv(big)
        t_tv = time.perf_counter() - t if tv is not None else float("nan")
        print(f"\n2048x2048 on CPU ({args.threads} threads), CARE net base 16 / depth 2 "
              f"({sum(p.numel() for p in model.net.parameters())} parameters):")
        print(f"  ijtorch restore (tiled 512/48, blended): {t_tiled:6.2f} s   ({r.restored.shape}, {r.restored.dtype})")
        print(f"  raw forward pass, whole image at once:   {t_raw:6.2f} s   ratio tiled/raw {t_tiled / t_raw:.2f}")
        print(f"  skimage denoise_tv_chambolle:            {t_tv:6.2f} s   ratio ijtorch/tv {t_tiled / t_tv:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
