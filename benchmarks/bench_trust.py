"""Trust benchmark (issue #15): the bundled ``nuclei`` model's dataset-shift warning on held-out
fluorescence images vs transmitted-light (brightfield, H&E) images, and what the check costs.

- In distribution: the model's recorded validation split (``config.json`` ``training.val_names``,
  14 DSB 2018 fluorescence images from ``../shared/data/nuclei_dsb2018/train``), never used to
  fit the reference (training images) nor to choose the threshold (held-out ``more`` images).
- Shifted: the 83 images of ``../shared/data/nuclei_dsb2018_brightfield_histology/train`` (13
  brightfield grey, 70 H&E RGB), each converted as ``segment``'s ``rgb=`` option says (default
  ``luminance``; ``inverted`` and ``hematoxylin`` reported too).
- Figures: detection rate (shifted images warned), false-alarm rate (validation images warned),
  AUROC of the shift score (validation vs shifted), AP@0.5 (``TP/(TP+FP+FN)`` pooled) per set.
- Overhead: the wall time of :meth:`StarDistModel.predict_instances` with the reference vs the same
  model without it, on the validation images (best of ``--repeats`` rounds, one torch thread).

Nothing is asserted; not part of ``make test``. Run (about 5 minutes on one quiet core)::

    python3 benchmarks/bench_trust.py [--data ../shared/data] [--repeats 3] [--split-half] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))


def auroc(negatives: list[float], positives: list[float]) -> float:
    """Probability that a shifted image scores above an in-distribution one (ties count half)."""
    neg, pos = np.asarray(negatives), np.asarray(positives)
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (neg.size * pos.size))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--split-half", action="store_true",
                    help="also: false alarms on held-out 'more' fluorescence images with a threshold calibrated on "
                         "the other half (both ways; network forward passes only, a few minutes)")
    args = ap.parse_args(argv)

    import tifffile
    import torch

    from ijtorch.models.shift import CONFIG_KEY
    from ijtorch.models.stardist import geometry as sd
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.models.store import resolve_model
    from ijtorch.tasks.segment import rgb_to_grey, segment

    torch.set_num_threads(1)
    logging.getLogger("ijtorch").setLevel(logging.ERROR)  # the warnings are counted, not printed
    path = resolve_model("nuclei")
    model = StarDistModel.load(path, device="cpu")
    ref = model.shift_reference
    if not ref:
        raise SystemExit("the bundled nuclei model has no shift reference (run tools/shift_reference.py)")
    thr = float(ref["threshold"])
    fl_dir = args.data / "nuclei_dsb2018" / "train"
    tl_dir = args.data / "nuclei_dsb2018_brightfield_histology" / "train"
    val = list(model.config["training"]["val_names"])
    kinds = {it["id"]: it["kind"] for it in json.loads((tl_dir / "index.json").read_text())["items"]}

    def run(image: np.ndarray, axes: str, gt: np.ndarray, rgb: str) -> dict:
        r = segment(image, axes, model=path, device="cpu", rgb=rgb)
        tp, fp, fn = sd.match_counts(gt, r.labels, (0.5,))[0.5]
        return {"score": r.shift_score, "warned": bool(r.shift_warning), "tp": tp, "fp": fp, "fn": fn,
                "warning": r.shift_warning}

    rows: dict[str, list[dict]] = {"fluorescence (validation)": []}
    for name in val:
        im = tifffile.imread(fl_dir / "images" / f"{name}.tif")
        rows["fluorescence (validation)"].append(run(im, "YX", tifffile.imread(fl_dir / "labels" / f"{name}.tif"),
                                                     "luminance"))
    for rgb in ("luminance", "inverted", "hematoxylin"):
        for name, kind in sorted(kinds.items()):
            if kind == "brightfield" and rgb != "luminance":
                continue  # grey images: the conversion does not apply
            im = tifffile.imread(tl_dir / "images" / f"{name}.tif")
            gt = tifffile.imread(tl_dir / "labels" / f"{name}.tif")
            key = f"{kind} (rgb={rgb})" if kind == "histology" else kind
            rows.setdefault(key, []).append(run(im, "YXS" if im.ndim == 3 else "YX", gt, rgb))
    fl_scores = [r["score"] for r in rows["fluorescence (validation)"]]

    def ap(rs: list[dict]) -> float:
        tp, fp, fn = (sum(r[k] for r in rs) for k in ("tp", "fp", "fn"))
        return tp / max(tp + fp + fn, 1)

    out: dict = {"threshold": thr, "false_alarm_rate_calibrated": ref.get("false_alarm_rate"),
                 "calibration": ref.get("calibration"), "sets": {}}
    print(f"bundled nuclei model, threshold {thr:.3f} (calibrated for {100 * ref['false_alarm_rate']:.0f} % false "
          f"alarms on {ref['calibration']['images']} held-out fluorescence images)")
    print(f"{'set':<32}{'n':>4}{'warned':>9}{'score median':>14}{'min':>7}{'max':>7}{'AUROC':>7}{'AP@0.5':>8}")
    for key, rs in rows.items():
        scores = [r["score"] for r in rs]
        warned = float(np.mean([r["warned"] for r in rs]))
        au = None if key.startswith("fluorescence") else auroc(fl_scores, scores)
        out["sets"][key] = {"n": len(rs), "warned": warned, "score_median": float(np.median(scores)),
                            "score_min": float(np.min(scores)), "score_max": float(np.max(scores)),
                            "auroc_vs_validation": au, "ap@0.5": ap(rs)}
        print(f"{key:<32}{len(rs):>4}{100 * warned:>8.1f}%{np.median(scores):>14.2f}{np.min(scores):>7.2f}"
              f"{np.max(scores):>7.2f}{'' if au is None else f'{au:.3f}':>7}{ap(rs):>8.3f}")
    default = rows["brightfield"] + rows["histology (rgb=luminance)"]
    out["transmitted_default"] = {"n": len(default), "detection_rate": float(np.mean([r["warned"] for r in default])),
                                  "auroc": auroc(fl_scores, [r["score"] for r in default])}
    out["false_alarm_rate_validation"] = float(np.mean([r["warned"] for r in rows["fluorescence (validation)"]]))
    print(f"brightfield + H&E (default rgb=luminance): detection {100 * out['transmitted_default']['detection_rate']:.1f} %"
          f" of {len(default)}, AUROC {out['transmitted_default']['auroc']:.3f}; false alarms on the validation "
          f"images {100 * out['false_alarm_rate_validation']:.1f} %")
    example = next(r["warning"] for r in rows["histology (rgb=luminance)"] if r["warning"])
    print(f"example warning: {example}")

    # overhead: the same model with and without its reference
    bare = StarDistModel(copy.deepcopy(model.net), {k: v for k, v in model.config.items() if k != CONFIG_KEY})
    images = [tifffile.imread(fl_dir / "images" / f"{n}.tif") for n in val]
    images += [rgb_to_grey(tifffile.imread(tl_dir / "images" / f"{n}.tif"), "YXS")[0]
               for n, k in sorted(kinds.items()) if k == "histology"][:6]
    for m in (model, bare):
        m.predict_instances(images[0])  # warm up
    best = {"with": np.inf, "without": np.inf}
    for _ in range(args.repeats):
        for label, m in (("without", bare), ("with", model)):
            t = time.perf_counter()
            for im in images:
                m.predict_instances(im)
            best[label] = min(best[label], time.perf_counter() - t)
    overhead = best["with"] / best["without"] - 1
    # the same cost measured directly: time inside the check's own code during predictions
    from ijtorch.models import shift as shift_module

    spent = [0.0]

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    add, summary = shift_module.FeatureCollector.add, shift_module.input_summary
    shift_module.FeatureCollector.add, shift_module.input_summary = timed(add), timed(summary)
    import ijtorch.models.stardist.model as model_module

    model_module._shift.input_summary = shift_module.input_summary
    try:
        t = time.perf_counter()
        for im in images:
            model.predict_instances(im)
        total = time.perf_counter() - t
    finally:
        shift_module.FeatureCollector.add, shift_module.input_summary = add, summary
    direct = spent[0] / max(total - spent[0], 1e-9)
    out["overhead"] = {"seconds_with": best["with"], "seconds_without": best["without"], "fraction": overhead,
                       "images": len(images), "repeats": args.repeats, "direct_fraction": direct}
    print(f"check overhead: {100 * overhead:+.1f} % wall time ({best['with']:.2f} s vs {best['without']:.2f} s for "
          f"{len(images)} images, best of {args.repeats}, 1 torch thread); time inside the check's code "
          f"{100 * direct:.1f} % of the rest of the prediction")
    if args.split_half:
        from ijtorch.models.shift import FeatureCollector, calibrate_threshold

        seen = set(model.config["training"]["train_names"]) | set(val)
        more = sorted(p for p in (args.data / "nuclei_dsb2018" / "more" / "images").glob("*.tif") if p.stem not in seen)
        scores = []
        for p in more:
            col = FeatureCollector(ref)
            model.predict_maps(tifffile.imread(p), features=col)
            scores.append(col.score)
        scores = np.asarray(scores)
        rng = np.random.default_rng(0)
        rates = []
        for _ in range(20):  # 20 random halvings, each half calibrating the other
            idx = rng.permutation(len(scores))
            a_, b_ = scores[idx[: len(idx) // 2]], scores[idx[len(idx) // 2:]]
            rates += [float(np.mean(b_ > calibrate_threshold(a_))), float(np.mean(a_ > calibrate_threshold(b_)))]
        out["split_half"] = {"images": len(scores), "false_alarm_mean": float(np.mean(rates)),
                             "false_alarm_range": [float(np.min(rates)), float(np.max(rates))],
                             "bundled_threshold_exceeded": float(np.mean(scores > thr))}
        print(f"split-half on {len(scores)} held-out 'more' fluorescence images (20 random halvings): false alarms "
              f"{100 * np.mean(rates):.1f} % on average ({100 * np.min(rates):.1f}-{100 * np.max(rates):.1f} %)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
