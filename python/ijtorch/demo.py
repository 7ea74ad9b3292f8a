"""``make demo``: the main job, end to end, in the embedded ImageJ.

Runs ``fiji_macros/demo_segment.ijm`` headless on sample nuclei images with the bundled model and
writes what a person looks at to the output folder: ``<name>.tif`` label maps, ``<name>_RoiSet.zip``,
``<name>_measurements.csv``, ``<name>_overlay.png``, and ``summary.csv`` (objects and AP@0.5 per
image). By default the images are the ones shipped in the package (:mod:`ijtorch.samples`), so the
demo runs from the repository alone; ``data=`` takes the shared data folder (``../shared/data``) or
any folder of ``images/`` + ``labels/`` instead. The images are taken from the model's held-out
validation split when the folder has them, so the printed AP@0.5 is honest — and the printout says
which kind of images they were.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

__all__ = ["run_demo", "demo_folder"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MACRO = PROJECT_ROOT / "fiji_macros" / "demo_segment.ijm"
N_IMAGES = 6


def demo_folder(data: Path | None = None) -> Path:
    """The folder with ``images/`` (and ``labels/``) the demo segments: the package's samples when
    ``data`` is None; else ``data`` itself, or its ``nuclei_dsb2018/train`` (the shared data folder)
    or its ``train``."""
    if data is None:
        from . import samples

        return samples.path()
    data = Path(data).expanduser()
    for c in (data / "nuclei_dsb2018" / "train", data / "train", data):
        if (c / "images").is_dir():
            return c
    raise SystemExit(f"ijtorch demo: no images/ folder in {data} (nor in its nuclei_dsb2018/train); pass the shared "
                     "data folder or a folder with images/ and labels/, or leave --data out to use the bundled samples")


def _pick(images_dir: Path, training: dict) -> tuple[list[str], str]:
    """Up to N_IMAGES file names, held-out ones first, and what they are to the model."""
    held_out = [n if n.endswith(".tif") else n + ".tif" for n in training.get("val_names") or []]
    trained = {n if n.endswith(".tif") else n + ".tif" for n in training.get("train_names") or []}
    names = [n for n in held_out if (images_dir / n).is_file()][:N_IMAGES]
    if names:
        return names, "held-out images (the model never trained on them)"
    names = sorted(p.name for p in images_dir.glob("*.tif"))[:N_IMAGES]
    if not names:
        raise SystemExit(f"ijtorch demo: no .tif images in {images_dir}")
    if all(n in trained for n in names):
        return names, "images the model was trained on (not an honest score)"
    if any(n in trained for n in names):
        return names, "images, some of which the model was trained on"
    return names, "images not in the model's training record"


def run_demo(*, output: Path, data: Path | None = None) -> int:
    import numpy as np

    from . import bridge
    from .io.tiff import read_tiff
    from .metrics.instance import match_labels
    from .models.store import resolve_model

    started = time.perf_counter()
    folder = demo_folder(data)
    images_dir, labels_dir = folder / "images", folder / "labels"
    config = json.loads((resolve_model("nuclei") / "config.json").read_text())
    names, kind = _pick(images_dir, config.get("training", {}))
    if not MACRO.is_file():
        raise SystemExit(f"ijtorch demo: the demo macro {MACRO} is missing (the demo runs from a clone of the repository)")
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    print(f"ijtorch demo: segmenting {len(names)} {kind} from {folder}", flush=True)
    bridge.start()
    # [brackets] keep paths with spaces whole (the macro reads its arguments with ij.Macro.getValue)
    result = bridge.run_macro(MACRO.read_text(), f"input=[{images_dir}] output=[{output}] files=[{','.join(names)}]")
    print(result.log)
    print(f"\n{'image':<24}{'objects':>8}{'AP@0.5':>8}")
    rows, aps = [], []
    for name in names:
        stem = Path(name).stem
        pred = read_tiff(output / f"{stem}.tif").data
        n_objects = int(np.count_nonzero(np.unique(pred)))
        ap = None
        if (labels_dir / name).is_file():
            ap = match_labels(read_tiff(labels_dir / name).data, pred, iou_threshold=0.5).accuracy
            aps.append(ap)
        rows.append({"image": stem, "objects": n_objects, "ap50": "" if ap is None else f"{ap:.4f}"})
        print(f"{stem:<24}{n_objects:>8}{'-' if ap is None else f'{ap:.3f}':>8}")
    with open(output / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "objects", "ap50"])
        w.writeheader()
        w.writerows(rows)
    seconds = time.perf_counter() - started
    if aps:
        print(f"\nmean AP@0.5 {sum(aps) / len(aps):.3f} over {len(aps)} {kind}")
    else:
        print(f"\nno labels/ next to the images in {folder}: no AP")
    print(f"outputs in {output}: <name>.tif label maps, <name>_RoiSet.zip, <name>_measurements.csv, "
          "<name>_overlay.png, summary.csv")
    print(f"total time {seconds:.1f} s")
    sys.stdout.flush()
    return 0
