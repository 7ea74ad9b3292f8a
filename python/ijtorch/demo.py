"""``make demo``: the main job, end to end, in the embedded ImageJ.

Runs ``fiji_macros/demo_segment.ijm`` headless on sample nuclei images with the bundled model —
images from the model's held-out validation split, so the printed AP@0.5 is honest — and writes
label TIFFs, RoiSet zips, measurement CSVs and overlay PNGs to the output folder.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

__all__ = ["run_demo", "find_shared_data"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 6


def find_shared_data(data: Path | None = None) -> Path:
    candidates = [data] if data else [Path(p) for p in (os.environ.get("IJTORCH_SHARED_DATA"),) if p]
    candidates += [Path.cwd().parent / "shared" / "data", PROJECT_ROOT.parent / "shared" / "data"]
    for c in candidates:
        if c and (c / "nuclei_dsb2018" / "train" / "images").is_dir():
            return c
    raise SystemExit("ijtorch demo: the shared data (nuclei_dsb2018) was not found; pass --data or set IJTORCH_SHARED_DATA")


def run_demo(*, output: Path, data: Path | None = None) -> int:
    from . import bridge
    from .metrics import match_labels
    from .io.tiff import read_tiff
    from .models.store import resolve_model

    started = time.perf_counter()
    data = find_shared_data(data)
    images_dir = data / "nuclei_dsb2018" / "train" / "images"
    labels_dir = data / "nuclei_dsb2018" / "train" / "labels"
    config = json.loads((resolve_model("nuclei") / "config.json").read_text())
    held_out = config.get("training", {}).get("val_names") or []
    names = [n if n.endswith(".tif") else n + ".tif" for n in held_out][:N_IMAGES]
    names = [n for n in names if (images_dir / n).is_file()] or sorted(p.name for p in images_dir.glob("*.tif"))[:N_IMAGES]
    output = output.resolve()
    output.mkdir(parents=True, exist_ok=True)
    macro = PROJECT_ROOT / "fiji_macros" / "demo_segment.ijm"
    bridge.start()
    result = bridge.run_macro(macro.read_text(), f"input={images_dir} output={output} files={','.join(names)}")
    print(result.log)
    print(f"\n{'image':<24}{'objects':>8}{'AP@0.5':>8}")
    aps = []
    for name in names:
        stem = Path(name).stem
        pred = read_tiff(output / f"{stem}.tif").data
        gt = read_tiff(labels_dir / name).data
        m = match_labels(gt, pred, iou_threshold=0.5)
        aps.append(m.accuracy)
        print(f"{stem:<24}{m.n_pred:>8}{m.accuracy:>8.3f}")
    seconds = time.perf_counter() - started
    print(f"\nmean AP@0.5 {sum(aps) / len(aps):.3f} over {len(names)} held-out images (the model never trained on them)")
    print(f"outputs in {output}: <name>.tif label maps, <name>_RoiSet.zip, <name>_measurements.csv, <name>_overlay.png")
    print(f"total time {seconds:.1f} s")
    sys.stdout.flush()
    return 0
