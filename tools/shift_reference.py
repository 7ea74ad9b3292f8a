"""Compute the dataset-shift reference of a bundled 2D model from its recorded training images.

For models trained before the check existed (the bundled ``nuclei`` star-convex model, the
``bacteria_phase`` and ``cells_phase`` U-Net + watershed models): the reference (see
:mod:`ijtorch.models.shift`) is built from the bottleneck features of the images named in the
model's ``config.json`` ``training.train_names`` and the threshold is calibrated, for a 5 %
false-alarm rate, on held-out images of the same kind that the model never saw (neither training
nor validation images). The result is written into the model's ``config.json`` (key ``shift``);
the weights are not touched.

Training names ``itemNNNN`` (the U-Net trainers' names) are the NNNN-th image, sorted by name, of
``--train-images`` without the calibration images (the order the bundled training scripts gave
them). ``--calibration-tile T`` scores the held-out images in ``T``×``T`` tiles: more calibration
scores where there are only a few held-out images (a tile's score varies more than a whole image's,
so the threshold errs towards fewer false alarms on whole images).

Usage (from the project root; minutes on one CPU core)::

    python3 tools/shift_reference.py python/ijtorch/models/bundled/nuclei \\
        --train-images ../shared/data/nuclei_dsb2018/train/images \\
        --calibration-images ../shared/data/nuclei_dsb2018/more/images --kind fluorescence
    python3 tools/shift_reference.py python/ijtorch/models/bundled/bacteria_phase \\
        --train-images ../shared/data/tracking_bacteria/01 --calibration-images ../shared/data/tracking_bacteria/01 \\
        --calibration-names t020,t021,t022,t023,t024 --calibration-tile 128 --kind "phase-contrast bacteria"
    python3 tools/shift_reference.py python/ijtorch/models/bundled/cells_phase \\
        --train-images ../shared/data/cells_usiigaci_phase/train/images \\
        --calibration-images ../shared/data/cells_usiigaci_phase/train/images --calibration-names set41 \\
        --calibration-tile 128 --kind "phase-contrast cell"
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from ijtorch.models import shift  # noqa: E402
from ijtorch.models.folder import CONFIG_NAME, config_text, read_config  # noqa: E402


def read_grey(path: Path) -> np.ndarray:
    import tifffile

    im = tifffile.imread(path)
    if im.ndim == 3 and im.shape[-1] in (3, 4):
        raise SystemExit(f"{path}: RGB image among the training images of a grey model")
    return im


def fit(model_dir: Path, train: list[np.ndarray], calib: list[np.ndarray], *, kind: str, rate: float) -> dict:
    """The reference of the model in ``model_dir`` (a 2D star-convex or U-Net + watershed model)."""
    mtype = read_config(model_dir).get("model_type")
    if mtype == "stardist2d":
        from ijtorch.models.stardist.model import StarDistModel

        return shift.fit_reference(StarDistModel.load(model_dir, device="cpu"), train, calib, kind=kind, rate=rate,
                                   max_images=100_000)
    if mtype == "unet_watershed":
        from ijtorch.models import unet_watershed as uw

        return uw.fit_shift_reference(uw.load_model(model_dir, device="cpu"), train, calib, kind=kind,
                                      max_images=100_000)
    raise SystemExit(f"{model_dir}: model_type={mtype!r}; this tool fits 2D star-convex and U-Net + watershed models")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model folder (config.json is updated in place)")
    ap.add_argument("--train-images", type=Path, required=True, help="folder with the training images (NAME.tif)")
    ap.add_argument("--calibration-images", type=Path, required=True,
                    help="folder of held-out images of the training kind; the model's own training and validation "
                         "images in it are skipped")
    ap.add_argument("--calibration-names", default="",
                    help="comma-separated names (without .tif) of the held-out images to use; default: all")
    ap.add_argument("--calibration-tile", type=int, default=0, help="score held-out images in tiles of this size")
    ap.add_argument("--kind", default="training", help="words for the training images in warnings, e.g. fluorescence")
    ap.add_argument("--rate", type=float, default=shift.FALSE_ALARM_RATE, help="false-alarm rate (default %(default)s)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    training = read_config(args.model).get("training", {})
    train_names = list(training.get("train_names", []))
    if not train_names:
        raise SystemExit(f"{args.model}: config.json records no training.train_names")
    wanted = {n for n in args.calibration_names.split(",") if n}
    calib_files = sorted(p for p in args.calibration_images.glob("*.tif") if not wanted or p.stem in wanted)
    if all(re.fullmatch(r"item\d{4}", n) for n in train_names):  # the U-Net trainers' item names
        calib_stems = {p.stem for p in calib_files} if args.calibration_images == args.train_images else set()
        files = sorted(p for p in args.train_images.glob("*.tif") if p.stem not in calib_stems)
        named = {f"item{i:04d}": p for i, p in enumerate(files)}
        train_files = [named[n] for n in train_names]
        seen = {named[n].stem for n in train_names + list(training.get("val_names", [])) if n in named}
    else:
        train_files = [args.train_images / f"{n}.tif" for n in train_names]
        seen = set(train_names) | set(training.get("val_names", []))
    calib_files = [p for p in calib_files if p.stem not in seen]
    if not calib_files:
        raise SystemExit("no held-out calibration images left (all are training or validation images)")
    calib = [read_grey(p) for p in calib_files]
    if args.calibration_tile:
        calib = [t for im in calib for t in shift.tiles_of(im, args.calibration_tile)]
    t0 = time.monotonic()
    reference = fit(args.model, [read_grey(p) for p in train_files], calib, kind=args.kind, rate=args.rate)
    tiles = f" in {len(calib)} tiles of {args.calibration_tile} px" if args.calibration_tile else ""
    reference["calibration"].update({
        "folder": args.calibration_images.name, "files": [p.stem for p in calib_files],
        "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of held-out images of the training kind "
                f"(neither training nor validation images of the model){tiles}"})
    print(f"reference from {len(train_files)} training images ({', '.join(p.stem for p in train_files[:4])}...), "
          f"threshold {reference['threshold']:.4g} from {len(calib_files)} held-out images{tiles} (median score "
          f"{reference['calibration']['score_median']:.3g}) in {time.monotonic() - t0:.0f} s")
    cfg_path = args.model / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text())
    cfg[shift.CONFIG_KEY] = reference
    tmp = cfg_path.with_suffix(".json.tmp")
    tmp.write_text(config_text(cfg))
    tmp.replace(cfg_path)
    print(f"written: {cfg_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
