"""Trust benchmark (issue #15): the bundled ``nuclei`` model's dataset-shift warning on held-out
fluorescence images vs transmitted-light (brightfield, H&E) images, and what the check costs.

- In distribution: the model's recorded validation split (``config.json`` ``training.val_names``,
  71 DSB 2018 fluorescence images from ``../shared/data/nuclei_dsb2018/train`` and ``more``), never
  trained on; the reference's threshold was calibrated on them (conformal rule, 5 % false alarms), so
  ``--split-half`` estimates the false-alarm rate with each half calibrating the other.
- Shifted: the 83 images of ``../shared/data/nuclei_dsb2018_brightfield_histology/train`` (13
  brightfield grey, 70 H&E RGB), each converted as ``segment``'s ``rgb=`` option says (default
  ``luminance``; ``inverted`` and ``hematoxylin`` reported too).
- Figures: detection rate (shifted images warned), false-alarm rate (validation images warned),
  AUROC of the shift score (validation vs shifted), AP@0.5 (``TP/(TP+FP+FN)`` pooled) per set.
- Overhead: the wall time of :meth:`StarDistModel.predict_instances` with the reference vs the same
  model without it, on the validation images (best of ``--repeats`` rounds, one torch thread).

``--auto`` (issue #15 items 4-5) adds, for every bundled nuclei model that ``model=auto`` chooses
from (``nuclei``: fluorescence; ``nuclei-transmitted``: brightfield and H&E):

- the shift score on held-out images of its own kind vs the other kind: false-alarm rate (own kind
  warned), detection rate (other kind warned), AUROC. Held out = each model's validation split
  (``training.val_names``), never trained on: 71 fluorescence images of ``nuclei_dsb2018`` and
  17 transmitted-light images (14 H&E, 3 brightfield) of ``nuclei_dsb2018_brightfield_histology/train``.
  The transmitted model's threshold was calibrated on these 17 images (no other transmitted-light
  images exist here), so its false-alarm rate on them is optimistic by construction;
- AP@0.5 (pooled ``TP/(TP+FP+FN)``) of ``model=auto`` on the mixed held-out images vs each single
  model, per kind, which model auto chose, and the wall time of auto vs the chosen model by name
  (the cost of the choice).

Nothing is asserted; not part of ``make test``. Run (about 5 minutes on one quiet core; ``--auto``
about 10 more, most of it the fluorescence model on 1024² brightfield images, which it fills with
thousands of false objects)::

    python3 benchmarks/bench_trust.py [--data ../shared/data] [--repeats 3] [--split-half] [--json out.json]
    python3 benchmarks/bench_trust.py --auto --auto-only [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

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
    ap.add_argument("--auto", action="store_true", help="also: model=auto and the shift check of every bundled "
                                                              "nuclei model (see the module docstring)")
    ap.add_argument("--auto-only", action="store_true", help="only the --auto part")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    logging.getLogger("ijtorch").setLevel(logging.ERROR)  # the warnings are counted, not printed
    out: dict = {}
    if args.auto or args.auto_only:
        out["auto"] = bench_auto(args.data)
    if not args.auto_only:
        out.update(bench_fluorescence_model(args))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _fluorescence_files(data: Path, name: str) -> tuple[Path, Path]:
    """Image and label paths of ``name`` in ``nuclei_dsb2018`` (its ``train`` or ``more`` folder)."""
    folder = data / "nuclei_dsb2018" / "train"
    if not (folder / "images" / f"{name}.tif").is_file():
        folder = data / "nuclei_dsb2018" / "more"
    return folder / "images" / f"{name}.tif", folder / "labels" / f"{name}.tif"


def _held_out(data: Path) -> list[tuple[str, str, Path, Path]]:
    """(kind, name, image, labels) of the bundled nuclei models' validation images."""
    from ijtorch.models.store import read_config, resolve_model

    tl_dir = data / "nuclei_dsb2018_brightfield_histology" / "train"
    kinds = {it["id"]: it["kind"] for it in json.loads((tl_dir / "index.json").read_text())["items"]}
    items = [("fluorescence", n, *_fluorescence_files(data, n))
             for n in read_config(resolve_model("nuclei"))["training"]["val_names"]]
    items += [(kinds[n], n, tl_dir / "images" / f"{n}.tif", tl_dir / "labels" / f"{n}.tif")
              for n in read_config(resolve_model("nuclei-transmitted"))["training"]["val_names"]]
    return items


def bench_auto(data: Path) -> dict:
    """Shift check of each bundled nuclei model (own kind vs other) and AP of model=auto vs each model."""
    import tifffile

    from ijtorch.models.shift import FeatureCollector
    from ijtorch.models.stardist import geometry as sd
    from ijtorch.models.store import load_model, resolve_model
    from ijtorch.tasks.segment import rgb_to_grey, segment

    own = {"nuclei": ("fluorescence",), "nuclei-transmitted": ("histology", "brightfield")}
    items = _held_out(data)
    images = {}
    for kind, name, ip, lp in items:
        im = tifffile.imread(ip)
        images[name] = (im, "YXS" if im.ndim == 3 else "YX", tifffile.imread(lp))
    out: dict = {"shift": {}, "ap": {}, "chosen": {}, "seconds": {}}
    print("held-out images: " + ", ".join(f"{k} {sum(i[0] == k for i in items)}"
                                           for k in ("fluorescence", "histology", "brightfield")))
    for model_name, kinds_own in own.items():  # shift scores from the forward pass only (no NMS)
        model = load_model(resolve_model(model_name), device="cpu")
        ref = model.shift_reference
        thr = float(ref["threshold"])
        scores: dict[str, list[float]] = {"own": [], "other": []}
        for kind, name, _, _ in items:
            im, axes, _ = images[name]
            grey = rgb_to_grey(im, axes)[0] if "S" in axes else im
            col = FeatureCollector(ref)
            model.predict_maps(grey, features=col)
            scores["own" if kind in kinds_own else "other"].append(col.score)
        res = {"threshold": thr, "n_own": len(scores["own"]), "n_other": len(scores["other"]),
               "false_alarm_rate": float(np.mean(np.asarray(scores["own"]) > thr)),
               "detection_rate": float(np.mean(np.asarray(scores["other"]) > thr)),
               "auroc": auroc(scores["own"], scores["other"]),
               "own_score_max": float(np.max(scores["own"])), "other_score_min": float(np.min(scores["other"]))}
        out["shift"][model_name] = res
        print(f"{model_name:<20} threshold {thr:.3f}: false alarms {100 * res['false_alarm_rate']:.1f} % of "
              f"{res['n_own']} own-kind images, detection {100 * res['detection_rate']:.1f} % of {res['n_other']} "
              f"other-kind images, AUROC {res['auroc']:.3f} (own max {res['own_score_max']:.2f}, other min "
              f"{res['other_score_min']:.2f})", flush=True)

    # the cost of the choice: auto vs the model it chose, by name, on the fluorescence images (same run)
    fl = [images[name] for kind, name, _, _ in items if kind == "fluorescence"]
    best = {"auto": np.inf, "nuclei": np.inf}
    for _ in range(3):
        for choice in best:
            t = time.perf_counter()
            for im, axes, _ in fl:
                segment(im, axes, model=choice, device="cpu")
            best[choice] = min(best[choice], time.perf_counter() - t)
    out["auto_overhead"] = {"images": len(fl), "seconds_auto": best["auto"], "seconds_nuclei": best["nuclei"],
                            "fraction": best["auto"] / best["nuclei"] - 1}
    print(f"model=auto costs {100 * out['auto_overhead']['fraction']:+.1f} % wall time over model=nuclei on the "
          f"{len(fl)} fluorescence images ({best['auto']:.2f} s vs {best['nuclei']:.2f} s, best of 3, 1 torch thread)",
          flush=True)

    def ap(cs: list[list[int]]) -> float:
        tp, fp, fn = (sum(c[i] for c in cs) for i in range(3))
        return tp / max(tp + fp + fn, 1)

    kinds = ("fluorescence", "histology", "brightfield")
    print(f"{'AP@0.5 (pooled)':<26}" + "".join(f"{k:>14}" for k in kinds) + f"{'transmitted':>14}{'all':>8}{'s':>8}")
    # the fluorescence model last: on 1024² brightfield images it makes thousands of false objects (slow)
    for choice in ("auto", "nuclei-transmitted", "nuclei"):
        per: dict[str, list[int]] = {k: [0, 0, 0] for k in kinds}
        t = time.perf_counter()
        for kind, name, _, _ in items:
            im, axes, gt = images[name]
            r = segment(im, axes, model=choice, device="cpu")
            tp, fp, fn = sd.match_counts(gt, r.labels, (0.5,))[0.5]
            per[kind] = [per[kind][0] + tp, per[kind][1] + fp, per[kind][2] + fn]
            if choice == "auto":
                out["chosen"].setdefault(kind, {}).setdefault(r.model, 0)
                out["chosen"][kind][r.model] += 1
        out["seconds"][choice] = time.perf_counter() - t
        row = {k: ap([per[k]]) for k in kinds}
        row["transmitted"] = ap([per["histology"], per["brightfield"]])
        row["all"] = ap(list(per.values()))
        out["ap"][choice] = row
        print(f"{'model=' + choice:<26}" + "".join(f"{row[k]:>14.3f}" for k in kinds)
              + f"{row['transmitted']:>14.3f}{row['all']:>8.3f}{out['seconds'][choice]:>8.0f}", flush=True)
    print("model=auto chose: " + "; ".join(f"{k}: {v}" for k, v in out["chosen"].items()), flush=True)
    return out


def bench_fluorescence_model(args: argparse.Namespace) -> dict:
    """The bundled fluorescence model's warning on its validation images vs transmitted-light images."""
    import tifffile

    from ijtorch.models.shift import CONFIG_KEY
    from ijtorch.models.stardist import geometry as sd
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.models.store import resolve_model
    from ijtorch.tasks.segment import rgb_to_grey, segment

    path = resolve_model("nuclei")
    model = StarDistModel.load(path, device="cpu")
    ref = model.shift_reference
    if not ref:
        raise SystemExit("the bundled nuclei model has no shift reference (run tools/shift_reference.py)")
    thr = float(ref["threshold"])
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
        image_path, labels_path = _fluorescence_files(args.data, name)
        im = tifffile.imread(image_path)
        rows["fluorescence (validation)"].append(run(im, "YX", tifffile.imread(labels_path),
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

    out: dict[str, Any] = {"threshold": thr, "false_alarm_rate_calibrated": ref.get("false_alarm_rate"),
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
    images = [tifffile.imread(_fluorescence_files(args.data, n)[0]) for n in val]
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
        # held-out fluorescence: the validation images and any 'more' image the model never saw
        more = [_fluorescence_files(args.data, n)[0] for n in val]
        more += sorted(p for p in (args.data / "nuclei_dsb2018" / "more" / "images").glob("*.tif") if p.stem not in seen)
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
        print(f"split-half on {len(scores)} held-out fluorescence images (20 random halvings): false alarms "
              f"{100 * np.mean(rates):.1f} % on average ({100 * np.min(rates):.1f}-{100 * np.max(rates):.1f} %)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
