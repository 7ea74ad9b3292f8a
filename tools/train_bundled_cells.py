"""Train the bundled phase-contrast whole-cell model ``cells_phase`` (U-Net + seeded watershed).

Reproducible: seeded (split, patches, initialisation; CPU runs are deterministic), resumable in
chunks (``--minutes`` per sitting; run again with ``--resume`` until ``--epochs`` are done; the
model folder is written after every chunk), and evaluated on a held-out image that training never
sees (``--test``, recorded in the model card and in ``config.json``). The card compares the model
with the classical pipeline (:func:`ijtorch.tasks.classical.segment_classical`, its parameters
chosen on the training images) on the same held-out image.

    nice -n 10 python tools/train_bundled_cells.py --minutes 30            # first chunk
    nice -n 10 python tools/train_bundled_cells.py --minutes 30 --resume   # further chunks
    python tools/train_bundled_cells.py --evaluate-only                    # figures + card again

:func:`run` and :func:`evaluate` are shared with ``tools/train_bundled_bacteria.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
BUNDLED = ROOT / "python" / "ijtorch" / "models" / "bundled"
SHARED = ROOT.parent / "shared" / "data"

CLASSICAL_GRID = dict(invert=(False, True), sigma=(1.0, 2.0, 4.0), min_distance=(4, 8, 16), h=(1.0, 3.0))
#: The phase-contrast pipeline's one choice per bundled model (by the kind of cell, not tuned).
PHASE_OBJECTS = {"cells_phase": "textured", "bacteria_phase": "dark"}


def pooled(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> dict[str, Any]:
    """AP@0.5/0.75 pooled over images (tp / (tp + fp + fn) of all objects), splits, merges, counts."""
    from ijtorch.metrics.instance import evaluate_pair

    rows = [evaluate_pair(np.asarray(g), np.asarray(p), thresholds=(0.5, 0.75)) for g, p in zip(gts, preds)]
    out: dict[str, Any] = {}
    for t in ("0.50", "0.75"):
        tp, fp, fn = (sum(r[f"_{k}@{t}"] for r in rows) for k in ("tp", "fp", "fn"))
        out[f"ap@{t}"] = round(tp / max(tp + fp + fn, 1), 4)
    out.update(splits=int(sum(r["splits"] for r in rows)), merges=int(sum(r["merges"] for r in rows)),
               n_true=int(sum(r["n_true"] for r in rows)), n_pred=int(sum(r["n_pred"] for r in rows)))
    return out


def classical_tuned(train_images: Sequence[np.ndarray], train_labels: Sequence[np.ndarray]) -> dict[str, Any]:
    """Parameters of :func:`segment_classical` maximising AP@0.5 on the training images."""
    from ijtorch.tasks.classical import segment_classical

    best: tuple[float, dict] | None = None
    keys = list(CLASSICAL_GRID)
    for values in itertools.product(*(CLASSICAL_GRID[k] for k in keys)):
        params = dict(zip(keys, values))
        ap = pooled(train_labels, [segment_classical(im, **params) for im in train_images])["ap@0.50"]
        if best is None or ap > best[0]:
            best = (ap, params)
    assert best is not None
    return best[1]


def evaluate(model_dir: Path, test_images: Sequence[np.ndarray], test_labels: Sequence[np.ndarray],
             train_images: Sequence[np.ndarray], train_labels: Sequence[np.ndarray],
             phase_objects: str = "textured") -> dict[str, Any]:
    """Held-out figures of the model (through :func:`ijtorch.tasks.segment.segment`, as users run it),
    of Otsu + watershed tuned on the training images and of the phase-contrast pipeline
    (``segment_phase_contrast(objects=phase_objects)``); seconds per megapixel of each."""
    from ijtorch.models.store import clear_model_cache
    from ijtorch.tasks.classical import segment_classical, segment_phase_contrast
    from ijtorch.tasks.segment import segment

    clear_model_cache()
    mpx = sum(im.size for im in test_images) / 1e6
    segment(test_images[0], "YX", model=str(model_dir), device="cpu")  # warm-up (load, first call)
    t0 = time.perf_counter()
    preds = [segment(im, "YX", model=str(model_dir), device="cpu").labels for im in test_images]
    model_s = time.perf_counter() - t0
    params = classical_tuned(train_images, train_labels)
    t0 = time.perf_counter()
    cpreds = [segment_classical(im, **params) for im in test_images]
    classical_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppreds = [segment_phase_contrast(im, objects=phase_objects) for im in test_images]
    phase_s = time.perf_counter() - t0
    return {"model": {**pooled(test_labels, preds), "s_per_mpx": round(model_s / mpx, 3)},
            "classical": {**pooled(test_labels, cpreds), "s_per_mpx": round(classical_s / mpx, 3), "params": params},
            "classical_phase": {**pooled(test_labels, ppreds), "s_per_mpx": round(phase_s / mpx, 3),
                                "params": {"objects": phase_objects}},
            "megapixels": round(mpx, 3)}


def postprocess_text(t: dict) -> str:
    """The post-processing rule of a model's ``thresholds`` in words."""
    if t.get("seed_method") == "distance":
        seeds = (f"seeds at h-maxima (h {t['seed_h']} px, smoothing {t['seed_sigma']} px) of the distance transform "
                 f"of p_interior > {t['seed_threshold']}")
    else:
        seeds = f"seeds = components of p_interior > {t['seed_threshold']} (≥ {t.get('min_seed_size', 5)} px)"
    return (f"foreground 1 - p_background > {t['fg_threshold']}{' (holes filled)' if t.get('fill_holes') else ''}; "
            f"{seeds}; min size {t['min_size']} px")


GENERATED_SECTIONS = ("## Training", "## Held-out figures", "## Where it fails")


def kept_sections(readme: Path) -> str:
    """The sections of an existing model card that :func:`card` does not write (e.g. the dataset-shift
    check, measured by ``tools/shift_reference.py`` and written by hand), to append to the new card."""
    if not readme.is_file():
        return ""
    parts = readme.read_text().split("\n## ")[1:]
    kept = ["## " + p.rstrip() for p in parts if not ("## " + p).startswith(GENERATED_SECTIONS)]
    return "".join("\n" + k + "\n" for k in kept)


def card(name: str, title: str, data_text: str, summary: dict, ev: dict, cfg: dict, command: str,
         failures: str, thresholds: dict | None = None) -> str:
    thresholds = thresholds or summary["thresholds"]
    hist = summary.get("history") or []
    first, last = (hist[0], hist[-1]) if hist else ({}, {})
    planned = cfg["epochs"]
    vals = [h["val_loss"] for h in hist if "val_loss" in h]  # still making new lows at the end: more would help
    under = summary["epochs_total"] < planned or (len(vals) > 3 and vals[-1] < min(vals[:-1]))
    m, c, ph = ev["model"], ev["classical"], ev.get("classical_phase")
    lines = [
        f"# {name}: {title}", "",
        f"U-Net (boundary / interior / background) + seeded watershed (`model_type` `unet_watershed`, 2D, "
        f"axes YX); `ijtorch segment --model {name}`, `run(\"ijtorch Segment\", \"model={name}\")`, "
        f"`segment(image, 'YX', model='{name}')`. Fine-tune with "
        f"`ijtorch train IMAGES LABELS --base-model {name} --output my-model` (the method follows the model type).", "",
        "## Training", "",
        f"- Data: {data_text}",
        f"- Training images: {', '.join(summary['train_names'])}; validation (early stopping, thresholds): "
        f"{', '.join(summary['val_names']) or 'none'}; **held out (never seen in training)**: {', '.join(cfg['test'])}.",
        f"- Network: base_channels {cfg['base_channels']}, depth {cfg['depth']}, boundary width "
        f"{cfg['boundary_width']}; patches {cfg['patch']}², batch {cfg['batch']}, {cfg['steps']} steps/epoch, "
        f"lr {cfg['lr']} (AdamW, cosine), augmentation (flips, rotations, zoom, elastic, intensity), seed {cfg['seed']}.",
        f"- Epochs: {summary['epochs_total']} of {planned} planned, on 2 shared CPU cores in resumable chunks "
        f"({summary['chunks']} chunk(s), {summary['train_seconds']:.0f} s of training).",
        f"- Loss: train {first.get('train_loss', float('nan')):.3f} → {last.get('train_loss', float('nan')):.3f}, "
        f"validation {first.get('val_loss', float('nan')):.3f} → {last.get('val_loss', float('nan')):.3f}.",
        *([f"- Fine-tuned from: {cfg['base_model']} (its network, normalisation and split record)."]
          if cfg.get("base_model") else []),
        f"- Post-processing: {postprocess_text(thresholds)}"
        + (f" (set by `--postprocess`, chosen on the validation crop; the foreground/seed thresholds tuned "
           f"in training were {summary['thresholds']['fg_threshold']}/{summary['thresholds']['seed_threshold']})."
           if cfg.get("postprocess") else " (foreground and seed thresholds tuned on the validation images)."),
        f"- Reproduce: `{command}`.", "",
    ]
    if under:
        lines += ["**Under-trained**: the validation loss was still falling when the time ran out; more "
                  "chunks (`--resume`) would likely improve it. The figures below are for this state.", ""]
    lines += [
        f"## Held-out figures ({', '.join(cfg['test'])}; {m['n_true']} objects)", "",
        "| | AP@0.5 | AP@0.75 | splits | merges | objects found | s / megapixel (CPU) |",
        "|---|---|---|---|---|---|---|",
        f"| {name} | {m['ap@0.50']:.3f} | {m['ap@0.75']:.3f} | {m['splits']} | {m['merges']} | {m['n_pred']} | {m['s_per_mpx']} |",
        f"| classical (Otsu + distance watershed, `tasks/classical.py`, tuned on the training images: "
        f"{', '.join(f'{k}={v}' for k, v in c['params'].items())}) | {c['ap@0.50']:.3f} | {c['ap@0.75']:.3f} | "
        f"{c['splits']} | {c['merges']} | {c['n_pred']} | {c['s_per_mpx']} |",
        *([f"| classical phase contrast (`segment_phase_contrast`, objects={ph['params']['objects']}, thresholds "
           f"from the image) | {ph['ap@0.50']:.3f} | {ph['ap@0.75']:.3f} | {ph['splits']} | {ph['merges']} | "
           f"{ph['n_pred']} | {ph['s_per_mpx']} |"] if ph else []), "",
        "AP = tp / (tp + fp + fn) pooled over the held-out objects (DSB 2018 definition); a split is a true "
        "object covered by two or more predictions, a merge a prediction covering two or more true objects "
        "(`ijtorch evaluate`). Small held-out sets: differences of a few objects move these figures.", "",
        "## Where it fails", "", failures, "",
    ]
    return "\n".join(lines)


def run(name: str, title: str, data_text: str, train_items: list, test_items: list, args: argparse.Namespace,
        command: str, failures: str) -> int:
    """Train (a chunk of) ``name`` on ``train_items`` (``Pair`` list), then evaluate on ``test_items`` and
    write the model card. Returns the exit code."""
    import torch

    from ijtorch.models import unet_watershed as uw
    from ijtorch.tasks.segment import train_segmentation

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.output)
    kept = kept_sections(out / "README.md")  # read now: training replaces the folder
    ckpt = Path(args.checkpoints)
    cfg = dict(epochs=args.epochs, steps=args.steps, batch=args.batch, patch=args.patch, lr=args.lr,
               base_channels=args.base_channels, depth=args.depth, boundary_width=args.boundary_width,
               seed=args.seed, test=[p.name for p in test_items],
               **({"base_model": str(args.base_model)} if args.base_model else {}),
               **({"postprocess": args.postprocess} if args.postprocess else {}))
    state_file = ckpt / "chunks.json"
    state = json.loads(state_file.read_text()) if (args.resume or args.evaluate_only) and state_file.is_file() \
        else {"chunks": 0, "train_seconds": 0.0, "history": []}
    if not args.evaluate_only:
        t0 = time.monotonic()
        summary = train_segmentation(
            [p.image for p in train_items], [p.labels for p in train_items], method="unet_watershed", output=out,
            epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, patch_size=args.patch,
            val_fraction=args.val_fraction, seed=args.seed, device="cpu", resume=args.resume,
            time_limit_s=args.minutes * 60, checkpoint_dir=ckpt, lr=args.lr, base_channels=args.base_channels,
            depth=args.depth, boundary_width=args.boundary_width, patience=None,
            base_model=str(args.base_model) if args.base_model else None,
            description=f"{title} (bundled; see README.md)")
        # item names are item0000...: map them back to the files
        names = {f"item{i:04d}": p.name for i, p in enumerate(train_items)}
        state["chunks"] += 1
        state["train_seconds"] += time.monotonic() - t0
        state["history"] = summary["history"]
        state["train_names"] = [names.get(n, n) for n in summary["train_names"]]
        state["val_names"] = [names.get(n, n) for n in summary["val_names"]]
        state["thresholds"] = summary["thresholds"]
        state["epochs_total"] = int(summary["history"][-1]["epoch"]) if summary["history"] else 0
        ckpt.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps(state, indent=1))
        print(f"chunk {state['chunks']}: {state['epochs_total']}/{args.epochs} epochs, "
              f"last {summary['history'][-1] if summary['history'] else {}}", flush=True)
    if args.postprocess:  # a rule chosen on the validation images, applied over the tuned thresholds
        model = uw.load_model(out)
        model.postprocess = uw.PostprocessConfig(**{**model.postprocess.model_dump(), **args.postprocess})
        uw.save_model(model, out)
    ev = evaluate(out, [p.image for p in test_items], [p.labels for p in test_items],
                  [p.image for p in train_items], [p.labels for p in train_items],
                  phase_objects=PHASE_OBJECTS.get(name, "textured"))
    print(json.dumps(ev, indent=1), flush=True)
    model = uw.load_model(out)
    model.meta = {**(model.meta or {}), "held_out": cfg["test"], "held_out_metrics": ev,
                  "bundled": {"script": command, **{k: v for k, v in cfg.items() if k != "test"}}}
    uw.save_model(model, out)  # replaces the folder: the card is written after
    (out / "README.md").write_text(card(name, title, data_text, state, ev, cfg, command, failures,
                                        thresholds=model.postprocess.model_dump()) + kept)
    return 0


def add_arguments(ap: argparse.ArgumentParser, *, name: str, epochs: int, steps: int, patch: int,
                  postprocess: dict | None = None) -> None:
    ap.add_argument("--output", type=Path, default=BUNDLED / name)
    ap.add_argument("--checkpoints", type=Path, default=Path(f"/tmp/ijtorch_{name}_ckpt"))
    ap.add_argument("--epochs", type=int, default=epochs, help="total epochs over all chunks")
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=patch)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--base-channels", type=int, default=16)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--boundary-width", type=int, default=1)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=30.0, help="time limit of this chunk")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--base-model", type=Path, default=None,
                    help="fine-tune this unet_watershed model folder (network and thresholds) instead of a new network")
    ap.add_argument("--postprocess", type=json.loads, default=postprocess,
                    help="JSON of post-processing keys (unet_watershed PostprocessConfig) set after training")
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoints of earlier chunks")
    ap.add_argument("--evaluate-only", action="store_true", help="no training: held-out figures and card again")


TEST = ("set41",)
#: Post-processing of cells_phase, chosen on the validation crop set26 with the 3-crop network (grid over
#: seed rule, foreground/seed thresholds, h and min size): distance-transform seeds split fewer flat cells
#: into fragments than thresholded-interior seeds; min size ~ the 5th percentile of the training cells'
#: areas (149 px); a high foreground threshold tightens the loose outlines.
CELLS_POSTPROCESS = {"seed_method": "distance", "seed_h": 3.0, "seed_sigma": 2.0, "fill_holes": True,
                     "fg_threshold": 0.8, "seed_threshold": 0.7, "min_size": 150}


def main() -> int:
    from ijtorch.train.data import load_pairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "cells_usiigaci_phase" / "train")
    add_arguments(ap, name="cells_phase", epochs=60, steps=20, patch=256, postprocess=CELLS_POSTPROCESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    pairs = load_pairs(args.data)
    train_items = [p for p in pairs if p.name not in TEST]
    test_items = [p for p in pairs if p.name in TEST]
    data_text = (f"`shared/data/cells_usiigaci_phase/train` (Usiigaci training crops, 512×512 phase contrast, "
                 f"uint16, manual outlines; MIT): {len(train_items)} crops for training/validation.")
    failures = ("A small model from a tiny training set (the 512×512 crops above, about 100 cells, of one microscope "
                "and cell line, Usiigaci): use it as a base for fine-tuning on a few annotated images of your own cells "
                "(`ijtorch train images/ labels/ --base-model cells_phase --output my-cells`); expect other "
                "magnifications, cell types and phase optics to need it. On the held-out crop most errors are "
                "extra objects where nobody annotated a cell: faint, out-of-focus or detached cells and the halo "
                "region around them are segmented as cells. Flat, faint cell edges (lamellipodia) are cut off or "
                "given to a neighbour where no boundary is visible, so outlines are loose (AP@0.75 far below "
                "AP@0.5); clusters of touching rounded (mitotic) cells with bright halos can merge. Held-out "
                "evaluation is on one crop only: a few objects move the figures.")
    return run("cells_phase", "phase-contrast whole cells", data_text, train_items, test_items, args,
               "nice -n 10 python tools/train_bundled_cells.py --minutes 30 [--resume]", failures)


if __name__ == "__main__":
    raise SystemExit(main())
