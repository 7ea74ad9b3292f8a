"""Compute the dataset-shift reference of a 2D star-convex model from its recorded training images.

For models trained before the check existed (the bundled ``nuclei`` model): the reference (see
:mod:`ijtorch.models.shift`) is built from the bottleneck features of the images named in the
model's ``config.json`` ``training.train_names`` and the threshold is calibrated, for a 5 %
false-alarm rate, on held-out images of the same kind that the model never saw (neither training
nor validation images). The result is written into the model's ``config.json`` (key ``shift``);
the weights are not touched.

Usage (from the project root; a few minutes on one CPU core)::

    python3 tools/shift_reference.py python/ijtorch/models/bundled/nuclei \\
        --train-images ../shared/data/nuclei_dsb2018/train/images \\
        --calibration-images ../shared/data/nuclei_dsb2018/more/images --kind fluorescence
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from ijtorch.models import shift  # noqa: E402
from ijtorch.models.folder import CONFIG_NAME  # noqa: E402
from ijtorch.models.stardist.model import StarDistModel  # noqa: E402


def read_grey(path: Path) -> np.ndarray:
    import tifffile

    im = tifffile.imread(path)
    if im.ndim == 3 and im.shape[-1] in (3, 4):
        raise SystemExit(f"{path}: RGB image among the training images of a grey model")
    return im


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model folder (config.json is updated in place)")
    ap.add_argument("--train-images", type=Path, required=True, help="folder with the training images (NAME.tif)")
    ap.add_argument("--calibration-images", type=Path, required=True,
                    help="folder of held-out images of the training kind; the model's own training and validation "
                         "images in it are skipped")
    ap.add_argument("--kind", default="training", help="words for the training images in warnings, e.g. fluorescence")
    ap.add_argument("--rate", type=float, default=shift.FALSE_ALARM_RATE, help="false-alarm rate (default %(default)s)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    model = StarDistModel.load(args.model, device="cpu")
    training = model.config.get("training", {})
    train_names = list(training.get("train_names", []))
    if not train_names:
        raise SystemExit(f"{args.model}: config.json records no training.train_names")
    seen = set(train_names) | set(training.get("val_names", []))
    calib = sorted(p for p in args.calibration_images.glob("*.tif") if p.stem not in seen)
    t0 = time.monotonic()
    reference = shift.fit_reference(model, [read_grey(args.train_images / f"{n}.tif") for n in train_names],
                                    [read_grey(p) for p in calib], kind=args.kind, rate=args.rate,
                                    max_images=100_000)
    reference["calibration"].update({"folder": args.calibration_images.name,
                                     "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of held-out images "
                                             "of the training kind (neither training nor validation images of the "
                                             "model)"})
    print(f"reference from {len(train_names)} training images, threshold {reference['threshold']:.4g} from "
          f"{len(calib)} held-out images (median score {reference['calibration']['score_median']:.3g}) in "
          f"{time.monotonic() - t0:.0f} s")
    cfg_path = args.model / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg[shift.CONFIG_KEY] = reference
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tmp.replace(cfg_path)
    print(f"written: {cfg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
