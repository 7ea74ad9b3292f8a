"""Phase-contrast whole cells and bacteria: bundled U-Net + watershed models vs classical vs Cellpose.

For each bundled phase-contrast model, on the held-out part of the shared data recorded in its
``config.json`` (``held_out``) — ``cells_phase``: Usiigaci crop ``set41`` of
``shared/data/cells_usiigaci_phase/train``; ``bacteria_phase``: frames 20-24 of
``shared/data/tracking_bacteria`` — this scores, side by side:

- the bundled model through :func:`ijtorch.tasks.segment.segment`, as users run it;
- the classical phase-contrast pipeline (:func:`ijtorch.tasks.classical.segment_phase_contrast`:
  thresholds and seed rule from each image; the one choice a user makes — ``objects="textured"``
  for spread whole cells, ``"dark"`` for bacteria — by the kind of cell, not tuned on these files);
- the global Otsu + distance watershed (:func:`ijtorch.tasks.classical.segment_classical`, defaults)
  for reference;
- Cellpose (``cellpose<4``, 3.x, CPU) trained **from scratch** in this run on the same training
  images the bundled model was trained on (everything not held out), ``--cellpose-epochs`` epochs,
  evaluated at the mean training-object diameter (cellpose's ``diam_labels``).

Columns: AP@0.5 and AP@0.75 (``tp / (tp + fp + fn)`` pooled over the held-out objects), splits and
merges (``ijtorch evaluate`` rules: a true object covered by two or more predictions / a prediction
covering two or more true objects), objects found, seconds per megapixel of segmentation (models
loaded, one warm-up call excluded; Cellpose: ``model.eval`` per image) and training seconds.

Cellpose runs in its own interpreter (``--cellpose-python``, default: this one when it imports
cellpose, else ``$IJTORCH_CELLPOSE_PYTHON``) so that its pins (numpy, opencv) stay out of the
ijtorch environment; a venv made with ``--system-site-packages`` shares torch::

    python3 -m venv --system-site-packages /tmp/cellpose-venv
    /tmp/cellpose-venv/bin/pip install 'cellpose<4'
    nice -n 10 python3 benchmarks/bench_segment_cells.py --cellpose-python /tmp/cellpose-venv/bin/python

Nothing is asserted; not part of ``make test``. ``benchmarks/bench_segment.py --cells`` calls
:func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IJTORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
THRESHOLDS = (0.5, 0.75)
#: The classical pipeline's one user choice per kind of cell (see the module docstring).
PHASE_OBJECTS = {"cells_phase": "textured", "bacteria_phase": "dark"}


# --------------------------------------------------------------------------------------- data
def load_cells(root: Path) -> list[Any]:
    from ijtorch.train.data import load_pairs

    return load_pairs(root / "cells_usiigaci_phase" / "train")


def load_bacteria(root: Path) -> list[Any]:
    """The bacteria movie's frames with their full label masks (CTC TRA), named ``tTTT``."""
    import tifffile

    from ijtorch.train.data import Pair

    movie = root / "tracking_bacteria"
    pairs = []
    for raw in sorted((movie / "01").glob("t*.tif")):
        lab = movie / "01_GT" / "TRA" / f"man_track{int(raw.stem[1:]):03d}.tif"
        if lab.is_file():
            pairs.append(Pair(raw.stem, tifffile.imread(raw), tifffile.imread(lab)))
    return pairs


DATASETS: dict[str, Callable[[Path], list[Any]]] = {"cells_phase": load_cells, "bacteria_phase": load_bacteria}


def split(model: str, pairs: list[Any]) -> tuple[list[Any], list[Any]]:
    """(training, held-out) pairs by the ``held_out`` names in the bundled model's config."""
    from ijtorch.models.store import read_config, resolve_model

    held = set(read_config(resolve_model(model)).get("held_out") or [])
    if not held:
        raise ValueError(f"model {model!r} records no held_out names in its config.json")
    test = [p for p in pairs if p.name in held]
    if len(test) != len(held):
        raise ValueError(f"held-out names of {model!r} not all found: {sorted(held - {p.name for p in test})}")
    return [p for p in pairs if p.name not in held], test


# ------------------------------------------------------------------------------------ scoring
def pooled(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, Any]:
    from ijtorch.metrics.instance import evaluate_pair

    rows = [evaluate_pair(np.asarray(g), np.asarray(p), thresholds=THRESHOLDS) for g, p in zip(gts, preds)]
    out: dict[str, Any] = {}
    for t in THRESHOLDS:
        tp, fp, fn = (sum(r[f"_{k}@{t:.2f}"] for r in rows) for k in ("tp", "fp", "fn"))
        out[f"AP@{t:.2f}"] = tp / max(tp + fp + fn, 1)
    out.update(splits=sum(int(r["splits"]) for r in rows), merges=sum(int(r["merges"]) for r in rows),
               found=sum(int(r["n_pred"]) for r in rows))
    return out


def timed(method: Callable[[np.ndarray], np.ndarray], images: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Predictions and seconds per megapixel; one warm-up call (model load, first-call set-up) excluded."""
    method(images[0])
    t0 = time.perf_counter()
    preds = [np.asarray(method(im)) for im in images]
    return preds, (time.perf_counter() - t0) / (sum(im.size for im in images) / 1e6)


# ----------------------------------------------------------------------------------- cellpose
def cellpose_python(explicit: str | None) -> str | None:
    """The interpreter that runs Cellpose: ``explicit``, this one if it imports cellpose, or
    ``$IJTORCH_CELLPOSE_PYTHON``; None when there is none."""
    if explicit:
        return explicit
    try:
        import cellpose  # noqa: F401

        return sys.executable
    except ImportError:
        return os.environ.get("IJTORCH_CELLPOSE_PYTHON") or None


def run_cellpose(python: str, train: list[Any], test: list[Any], epochs: int, images_per_epoch: int, seed: int,
                 timeout_s: float) -> dict[str, Any]:
    """Train Cellpose from scratch on ``train`` and segment ``test`` in ``python`` (a subprocess).
    Returns ``{"labels": [...], "train_s", "s_per_mpx", "epochs", "version", "diameter"}``."""
    with tempfile.TemporaryDirectory(prefix="ijtorch-cellpose-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        arrays = {f"train_image_{i}": p.image for i, p in enumerate(train)}
        arrays.update({f"train_labels_{i}": p.labels for i, p in enumerate(train)})
        arrays.update({f"test_image_{i}": p.image for i, p in enumerate(test)})
        np.savez(src, **arrays)
        env = {**os.environ, "CELLPOSE_LOCAL_MODELS_PATH": str(Path(tmp) / "models"),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run([python, str(Path(__file__).resolve()), "--cellpose-worker", str(src), str(dst),
                               "--cellpose-epochs", str(epochs), "--cellpose-images-per-epoch", str(images_per_epoch),
                               "--seed", str(seed)],
                              env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"cellpose worker exited with {done.returncode}: {tail[0]}")
        with np.load(dst) as z:
            meta = json.loads(str(z["meta"]))
            return {**meta, "labels": [z[f"labels_{i}"] for i in range(len(test))]}


def cellpose_worker(src: Path, dst: Path, epochs: int, images_per_epoch: int, seed: int) -> int:
    """In the Cellpose interpreter (numpy + cellpose only, no ijtorch): train from scratch, segment."""
    import torch
    from cellpose import models, train, version

    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with np.load(src) as z:
        n_train = sum(k.startswith("train_image_") for k in z.files)
        n_test = sum(k.startswith("test_image_") for k in z.files)
        images = [z[f"train_image_{i}"].astype(np.float32) for i in range(n_train)]
        labels = [z[f"train_labels_{i}"].astype(np.int32) for i in range(n_train)]
        tests = [z[f"test_image_{i}"].astype(np.float32) for i in range(n_test)]
    model = models.CellposeModel(gpu=False, pretrained_model=False, model_type=None)  # random initialisation
    save = Path(os.environ.get("CELLPOSE_LOCAL_MODELS_PATH", dst.parent))
    (save / "models").mkdir(parents=True, exist_ok=True)  # train_seg writes save_path/models/<name>
    t0 = time.perf_counter()
    train.train_seg(model.net, train_data=images, train_labels=labels, channels=[0, 0], normalize=True,
                    n_epochs=epochs, nimg_per_epoch=images_per_epoch or None, min_train_masks=1, save_path=str(save), model_name="from_scratch",
                    save_every=max(epochs, 1))
    train_s = time.perf_counter() - t0
    diameter = float(model.net.diam_labels.item())  # mean object diameter of the training masks
    model.eval(tests[0], channels=[0, 0], diameter=diameter)  # warm-up
    t0 = time.perf_counter()
    masks = [model.eval(im, channels=[0, 0], diameter=diameter)[0] for im in tests]
    s_per_mpx = (time.perf_counter() - t0) / (sum(im.size for im in tests) / 1e6)
    meta = {"train_s": train_s, "s_per_mpx": s_per_mpx, "epochs": epochs, "images_per_epoch": images_per_epoch or n_train,
            "version": version,
            "diameter": diameter}
    np.savez(dst, meta=json.dumps(meta), **{f"labels_{i}": np.asarray(m, np.int32) for i, m in enumerate(masks)})
    return 0


# ---------------------------------------------------------------------------------- the table
def bench_model(model: str, args: argparse.Namespace, python: str | None) -> list[dict[str, Any]]:
    from ijtorch.tasks.classical import segment_classical, segment_phase_contrast
    from ijtorch.tasks.segment import segment

    train, test = split(model, DATASETS[model](args.data))
    gts = [p.labels for p in test]
    images = [p.image for p in test]
    held = f"{len(test)} img / {sum(len(np.unique(g)) - 1 for g in gts)} obj"
    objects = PHASE_OBJECTS[model]
    methods: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        (f"{model} (bundled U-Net + watershed)", lambda im: segment(im, "YX", model=model, device="cpu").labels),
        (f"classical phase contrast (objects={objects})", lambda im: segment_phase_contrast(im, objects=objects)),
        ("classical Otsu + watershed (defaults)", lambda im: segment_classical(im)),
    ]
    rows = []
    for name, method in methods:
        preds, s_per_mpx = timed(method, images)
        rows.append({"method": name, "held out": held, **pooled(gts, preds), "s/Mpx": s_per_mpx})
        print(f"  {name}: done", file=sys.stderr, flush=True)
    name = f"Cellpose from scratch ({args.cellpose_epochs} epochs, {len(train)} training images)"
    if python is None:
        why = "left out (--no-cellpose)" if args.no_cellpose else "skipped: no interpreter with cellpose<4 (--cellpose-python)"
        rows.append({"method": name, "note": why})
        return rows
    try:
        cp = run_cellpose(python, train, test, args.cellpose_epochs, args.cellpose_images_per_epoch, args.seed,
                          args.cellpose_timeout)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        rows.append({"method": name, "note": f"failed: {e}"})
        return rows
    rows.append({"method": f"Cellpose {cp['version']} from scratch ({cp['epochs']} epochs x {cp['images_per_epoch']} "
                           f"patches, {len(train)} training images)",
                 "held out": held, **pooled(gts, cp["labels"]), "s/Mpx": cp["s_per_mpx"], "train s": cp["train_s"]})
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    cols = ["method", "held out", "AP@0.50", "AP@0.75", "splits", "merges", "found", "s/Mpx", "train s", "note"]
    cols = [c for c in cols if any(c in r for r in rows)]
    cell = {c: [_fmt(r.get(c, "")) for r in rows] for c in cols}
    width = {c: max(len(c), *(len(v) for v in cell[c])) for c in cols}
    print(title)
    print("  ".join(c.ljust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for i in range(len(rows)):
        print("  ".join(cell[c][i].ljust(width[c]) if c in ("method", "note") else cell[c][i].rjust(width[c])
                        for c in cols))
    print()


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--models", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (here and in the Cellpose worker)")
    ap.add_argument("--cellpose-python", default=None, help="interpreter with cellpose<4 installed")
    ap.add_argument("--cellpose-epochs", type=int, default=100,
                    help="Cellpose training epochs from scratch (its command line's default is 500; 100 epochs of the "
                         "4 cell crops took about an hour on the loaded shared 2-core CPU, ~15 s per batch)")
    ap.add_argument("--cellpose-images-per-epoch", type=int, default=0,
                    help="random training patches per Cellpose epoch (cellpose's nimg_per_epoch; 0: one per training "
                         "image, cellpose's default)")
    ap.add_argument("--cellpose-timeout", type=float, default=5400.0, help="seconds before a Cellpose run is given up")
    ap.add_argument("--no-cellpose", action="store_true", help="leave Cellpose out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cellpose-worker", nargs=2, type=Path, metavar=("IN_NPZ", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.cellpose_worker:
        return cellpose_worker(*args.cellpose_worker, args.cellpose_epochs, args.cellpose_images_per_epoch, args.seed)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        print(f"skipped: shared data not found at {args.data}")
        return 0
    python = None if args.no_cellpose else cellpose_python(args.cellpose_python)
    for model in args.models:
        try:
            rows = bench_model(model, args, python)
        except (ValueError, OSError) as e:  # a benchmark reports, it does not fail
            rows = [{"method": model, "note": f"skipped: {e}"}]
        print_table(rows, f"{model}: held-out shared data, CPU, {args.threads} thread(s)")
    print("AP@T = tp/(tp+fp+fn) pooled over the held-out objects; splits/merges as `ijtorch evaluate`; "
          "s/Mpx = seconds per megapixel of segmentation, models loaded; train s = Cellpose training seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
