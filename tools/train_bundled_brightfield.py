#!/usr/bin/env python3
"""Train a second bundled nuclei model for transmitted light (brightfield and H&E histology).

Data: ``../shared/data/nuclei_dsb2018_brightfield_histology/train`` (83 real images: 70 H&E RGB,
13 brightfield grey; 3 956 nuclei). RGB images are converted exactly as ``segment``'s default
``rgb=luminance`` converts them (0.299 R + 0.587 G + 0.114 B), so the model sees at prediction time
what it saw in training; grey brightfield images are used as they are. The validation split (20 % of
each kind of ``index.json``, so both brightfield and H&E are held out; seed 0, by sorted name) is
held out: thresholds are tuned, metrics measured and the dataset-shift
threshold calibrated on it (``ijtorch.models.shift``), with warnings that name the training images
"transmitted-light (brightfield, H&E)".

Usage (from the repository root)::

    python3 tools/train_bundled_brightfield.py [--minutes 120] [--epochs 200] [--device cuda] \\
        [--output python/ijtorch/models/bundled/nuclei-transmitted] [--resume]

``--resume`` continues from the last checkpoint in ``--checkpoints`` (interrupted or time-limited
runs); ``--base-model python/ijtorch/models/bundled/nuclei`` starts from the fluorescence model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

KIND = "transmitted-light (brightfield, H&E)"


def load_items(data: Path) -> list:
    """Image/label pairs of ``data/images`` and ``data/labels`` (RGB → luminance, as ``segment``)."""
    import tifffile

    from ijtorch.tasks.segment import rgb_to_grey
    from ijtorch.train.data import Pair

    pairs = []
    for f in sorted((data / "images").glob("*.tif")):
        image = tifffile.imread(f)
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = rgb_to_grey(image, "YXS", "luminance")[0]
        pairs.append(Pair(f.stem, image, tifffile.imread(data / "labels" / f.name)))
    return pairs


def stratified_val_names(data: Path, names: list[str], fraction: float, seed: int) -> list[str]:
    """``fraction`` of each ``kind`` in ``data/index.json`` (at least one per kind), seeded.

    A plain random 15 % of 83 images can hold out no brightfield image at all (13 of 83)."""
    import numpy as np

    kinds = {item["id"]: item["kind"] for item in json.loads((data / "index.json").read_text())["items"]}
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for kind in sorted({kinds[n] for n in names}):
        members = sorted(n for n in names if kinds[n] == kind)
        n_val = max(1, int(round(len(members) * fraction)))
        val += [members[i] for i in rng.permutation(len(members))[:n_val]]
    return sorted(val)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path,
                    default=ROOT.parent / "shared" / "data" / "nuclei_dsb2018_brightfield_histology" / "train")
    ap.add_argument("--output", type=Path, default=ROOT / "python" / "ijtorch" / "models" / "bundled" / "nuclei-transmitted")
    ap.add_argument("--checkpoints", type=Path, default=Path("/tmp/ijtorch_nuclei_transmitted_ckpt"))
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=120.0, help="training time limit (resume to continue)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--base-model", type=Path, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="validation fraction of each kind")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", choices=("best", "final"), default="best")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.train.stardist_train import train_stardist

    torch.set_num_threads(args.threads)
    t0 = time.time()
    pairs = load_items(args.data)
    val_names = stratified_val_names(args.data, [p.name for p in pairs], args.val_fraction, args.seed)
    summary = train_stardist(
        pairs, output=args.output, val_names=val_names, seed=args.seed, keep=args.keep, epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch_size=args.batch, patch_size=args.patch, n_rays=32, grid=2, base_channels=16, depth=3,
        head_channels=32, lr=args.lr, base_model=args.base_model, checkpoint_dir=args.checkpoints,
        resume=args.resume, device=args.device, workers=args.workers, time_limit_s=args.minutes * 60,
        progress_bar=False,
        description="2D StarDist nuclei model (transmitted light: brightfield, H&E as luminance), trained on DSB 2018",
        shift_kind=KIND,  # no other transmitted-light images exist here: calibrated on the validation split
    )
    model = StarDistModel.load(args.output, device="cpu")
    t = model.config["training"]
    t["split"] = {**t.get("split", {}), "rule": f"stratified by index.json kind: {args.val_fraction:.0%} of each "
                  f"kind (at least one), numpy default_rng({args.seed}) permutation of the sorted names of each kind"}
    model.config["auto"] = {"family": "nuclei"}  # a candidate of segment's model=auto (ijtorch.models.auto)
    model.save(args.output)
    print(json.dumps(summary, indent=2, default=str))
    print(f"total {time.time() - t0:.0f} s; write the model card (README.md) before bundling")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
