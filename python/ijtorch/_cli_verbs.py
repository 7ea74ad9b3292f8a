"""The task verbs of the CLI: segment, train, evaluate, models, demo.

Each verb calls the same task function as the ImageJ command and the server.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TIFF_SUFFIXES = (".tif", ".tiff")


def _input_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
            if not found:
                raise SystemExit(f"ijtorch: folder {path} holds no .tif/.tiff files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"ijtorch: input {path} does not exist")
    return files


def _segment(args: argparse.Namespace) -> int:
    from .io.outputs import write_segmentation_outputs
    from .io.tiff import read_tiff
    from .tasks.segment import segment

    files = _input_files(args.inputs)
    out = Path(args.output)
    total = 0
    for path in files:
        image = read_tiff(path)
        if args.axes:
            from dataclasses import replace

            from .image import check_axes

            image = replace(image, axes=check_axes(args.axes, image.data.ndim, arg_name="--axes"))
        started = time.perf_counter()
        result = segment(image.data, image.axes, model=args.model, prob_threshold=args.prob_threshold,
                         nms_threshold=args.nms_threshold, channel=args.channel, device=args.device,
                         test_time_augmentation=args.test_time_augmentation, scale=args.scale)
        seconds = time.perf_counter() - started
        write_segmentation_outputs(out, path.stem, image, result.labels, result.axes, inputs=(path,))
        total += result.n_objects
        print(f"{path.name}: {result.n_objects} objects in {seconds:.2f} s -> {out / (path.stem + '.tif')}")
    print(f"{len(files)} image(s), {total} objects, model {args.model}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .tasks.segment import train_segmentation

    summary = train_segmentation(args.images, args.labels, output=args.output, method=args.method,
                                 base_model=args.base_model, epochs=args.epochs, steps_per_epoch=args.steps,
                                 patch_size=args.patch_size, batch_size=args.batch_size, resume=args.resume,
                                 device=args.device, val_fraction=args.val_fraction, seed=args.seed)
    metrics = summary.get("metrics", {})
    print(f"model saved to {summary['output']}")
    for key, value in metrics.items():
        print(f"  {key}: {value}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .tasks.evaluate import evaluate, format_table

    result = evaluate(args.pred_dir, args.gt_dir, output=args.output)
    print(format_table(result))
    if result.get("csv"):
        print(f"written: {result['csv']}")
    return 0


def _track(args: argparse.Namespace) -> int:
    import numpy as np

    from .image import check_axes
    from .io.tiff import read_tiff
    from .tasks.track import track_movie, write_track_outputs
    from .tasks.tracking import TrackingParams

    source = Path(args.input)
    if source.is_dir():  # a folder of frames, e.g. a Cell Tracking Challenge TRA folder
        frames = [read_tiff(p) for p in _input_files([str(source)])]
        data, axes, calibration = np.stack([f.data for f in frames]), "T" + frames[0].axes, frames[0].calibration
    else:
        movie = read_tiff(source)
        data, axes, calibration = movie.data, movie.axes, movie.calibration
    if args.axes:
        axes = check_axes(args.axes, data.ndim, arg_name="--axes")
    params = TrackingParams(max_distance=args.max_distance, max_gap=args.max_gap, allow_splitting=not args.no_divisions,
                            fill_gaps=args.fill_gaps)
    tracks = track_movie(data, axes, is_labels=args.labels, model=args.model, calibration=calibration, params=params)
    paths = write_track_outputs(args.output, source.stem, tracks, image_path=source if source.is_file() else None)
    print(f"{source.name}: {len(tracks.spots['id'])} detections, {len(tracks.ctc)} tracks, {tracks.n_divisions} divisions")
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from .io.tiff import write_imagej_tiff
    from .io.tiff import read_tiff
    from .tasks.restore import denoise_n2v, restore

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for path in _input_files(args.inputs):
        image = read_tiff(path)
        channel = args.channel - 1 if args.channel else None
        target = out / f"{path.stem}.tif"
        if args.verb == "denoise" and not args.model:
            restored = denoise_n2v(image.data, image.axes, epochs=args.epochs, steps_per_epoch=args.steps, channel=channel)
            axes = image.axes.replace("C", "")
            extra = {}
        else:
            result = restore(image.data, image.axes, model=args.model, channel=channel,
                             uncertainty=args.uncertainty, error_map=args.error_map)
            restored, axes = result.restored, result.axes
            extra = {"uncertainty": result.uncertainty, "error_map": result.error_map}
            if result.shift_warning:
                print(f"warning: {path.name}: {result.shift_warning}")
        write_imagej_tiff(target, restored.astype("float32"), axes, calibration=image.calibration, source=path)
        for kind, data in extra.items():
            if data is not None:
                write_imagej_tiff(out / f"{path.stem}_{kind}.tif", data.astype("float32"), axes,
                                  calibration=image.calibration, source=path)
        print(f"{path.name} -> {target}")
    return 0


def _train_restoration(args: argparse.Namespace) -> int:
    from .tasks.restore import train_restoration

    summary = train_restoration(args.kind, args.inputs, args.targets, output=args.output, epochs=args.epochs,
                                steps_per_epoch=args.steps, base_model=args.base_model)
    print(f"model saved to {summary.get('output', args.output)}")
    for key, value in (summary.get("metrics") or {}).items():
        print(f"  {key}: {value}")
    return 0


def _classify_data(path: Path):
    import numpy as np

    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z["images"], (z["labels"] if "labels" in z else None), [str(c) for c in z["classes"]] if "classes" in z else None
    from .tasks.classify import load_class_folders

    images, labels, classes, _ = load_class_folders(path)
    return images, labels, classes


def _classify(args: argparse.Namespace) -> int:
    import numpy as np

    from .io.outputs import write_table_csv
    from .tasks.classify import classify, embed, write_features

    images, _, _ = _classify_data(Path(args.input))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.verb == "embed":
        path = write_features(out / "features.csv", embed(images, model=args.model))
        print(f"{len(images)} feature vectors -> {path}")
        return 0
    result = classify(images, model=args.model)
    columns = {"item": np.arange(len(images)), "class": np.asarray(result["class"]),
               "confidence": np.asarray(result["confidence"])}
    for i, name in enumerate(result["classes"]):
        columns[f"p_{name}"] = np.asarray(result["probabilities"])[:, i]
    path = write_table_csv(out / "classes.csv", columns)
    print(f"{len(images)} items classified -> {path}")
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    images, labels, classes = _classify_data(Path(args.input))
    from .tasks.classify import train_classifier

    summary = train_classifier(images, labels, classes=classes, output=args.output, base_model=args.base_model,
                               epochs=args.epochs, seed=args.seed)
    print(f"model saved to {summary.get('output', args.output)}")
    for key, value in (summary.get("metrics") or {}).items():
        if not isinstance(value, (list, dict)):
            print(f"  {key}: {value}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from .models.store import list_models

    for entry in list_models():
        print(f"{entry['name']:<24} {entry.get('source', ''):<8} {entry.get('model_type', '')}  {entry.get('path', '')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(output=Path(args.output), data=Path(args.data) if args.data else None)


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("segment", help="instance segmentation of TIFF files or folders")
    p.add_argument("inputs", nargs="+", help="TIFF files or folders of TIFFs")
    p.add_argument("--output", required=True, help="folder for <name>.tif label maps, RoiSet zips, CSVs, overlays")
    p.add_argument("--model", default="nuclei", help="model name (see 'ijtorch models') or model folder; default: the bundled nuclei model")
    p.add_argument("--prob-threshold", type=float, default=None, help="object probability threshold (default: the model's tuned value)")
    p.add_argument("--nms-threshold", type=float, default=None, help="overlap threshold of non-maximum suppression (default: tuned)")
    p.add_argument("--channel", type=int, default=None, help="channel to segment in multi-channel images (1-based)")
    p.add_argument("--axes", default=None, help="axes of the input when the TIFF does not say, e.g. TYX or ZYX")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--test-time-augmentation", action="store_true",
                   help="average the model's maps over 8 flips/rotations (2D models; 8x slower)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="resize by this factor before the model: 2 when objects are half the size of the training "
                        "objects (2D models; default 1)")
    p.set_defaults(func=_segment)

    p = sub.add_parser("train", help="train (or fine-tune) an instance segmentation model from image/label folders")
    p.add_argument("images", help="folder of images")
    p.add_argument("labels", help="folder of label maps with the same file names")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--method", default="stardist", choices=["stardist", "unet_watershed"])
    p.add_argument("--base-model", default=None, help="fine-tune from this model (name or folder)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=100, help="steps per epoch")
    p.add_argument("--patch-size", type=int, default=None, help="training patch edge (default: 128 in 2D, 96 in 3D)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per step (default: 8 in 2D, 2 in 3D)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="compare predicted label maps with ground truth (AP, F1, splits, merges)")
    p.add_argument("pred_dir")
    p.add_argument("gt_dir")
    p.add_argument("--output", default=None, help="folder for evaluation.csv")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("track", help="track objects through a time-lapse TIFF or a folder of frames")
    p.add_argument("input", help="time-lapse TIFF (T axis) or a folder of frame TIFFs")
    p.add_argument("--output", required=True, help="folder for TrackMate XML/CSV, CTC result, GEFF, statistics")
    p.add_argument("--labels", action="store_true", help="the input already holds label masks (e.g. a CTC TRA folder)")
    p.add_argument("--model", default="nuclei", help="segmentation model when the input is not labels")
    p.add_argument("--axes", default=None, help="axes of the input when the TIFF does not say, e.g. TYX")
    p.add_argument("--max-distance", type=float, default=15.0, help="largest frame-to-frame displacement (calibrated units)")
    p.add_argument("--max-gap", type=int, default=2, help="largest number of missed frames bridged")
    p.add_argument("--no-divisions", action="store_true", help="do not detect divisions")
    p.add_argument("--fill-gaps", action="store_true",
                   help="insert an interpolated object in each frame a closed gap skips (as TrackMate's 'close gaps')")
    p.set_defaults(func=_track)

    for verb, text in (("restore", "restore images with a CARE / Noise2Void / artificial-labelling model"),
                       ("denoise", "Noise2Void: train on each noisy image and denoise it (or apply --model)")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("inputs", nargs="+", help="TIFF files or folders")
        p.add_argument("--output", required=True, help="folder for <name>.tif (32-bit) and optional maps")
        p.add_argument("--model", default=None if verb == "denoise" else "", required=verb == "restore",
                       help="restoration model name or folder")
        p.add_argument("--channel", type=int, default=None, help="channel to restore (1-based) in multi-channel images")
        p.add_argument("--uncertainty", action="store_true", help="also write <name>_uncertainty.tif (test-time augmentation std)")
        p.add_argument("--error-map", action="store_true", help="also write <name>_error_map.tif (re-degradation error)")
        p.add_argument("--epochs", type=int, default=10, help="Noise2Void training epochs (denoise without --model)")
        p.add_argument("--steps", type=int, default=50, help="Noise2Void training steps per epoch")
        p.set_defaults(func=_restore)

    p = sub.add_parser("train-restoration", help="train CARE / N2V / N2N / artificial labelling from folders")
    p.add_argument("kind", choices=["care", "n2v", "n2n", "artificial_labelling"])
    p.add_argument("inputs", help="folder of inputs (noisy / low SNR / source channel)")
    p.add_argument("targets", nargs="?", default=None, help="folder of targets with the same names (not for n2v)")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--base-model", default=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=50)
    p.set_defaults(func=_train_restoration)

    for verb, text in (("classify", "classify images/crops (.npz with 'images', or class folders) with a classifier"),
                       ("embed", "export one feature vector per image/crop (CSV) for clustering")):
        p = sub.add_parser(verb, help=text)
        p.add_argument("input", help=".npz with images (N,C,Y,X) or a folder of class sub-folders")
        p.add_argument("--model", required=True, help="classifier model name or folder")
        p.add_argument("--output", required=True, help="folder for classes.csv / features.csv")
        p.set_defaults(func=_classify)

    p = sub.add_parser("train-classifier", help="train a classifier from an .npz (images, labels, classes) or class folders")
    p.add_argument("input")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--base-model", default=None, help="fine-tune: reuse this model's backbone with a new head")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser("models", help="list bundled and user models")
    p.set_defaults(func=_models)

    p = sub.add_parser("demo", help="segment sample nuclei in the embedded ImageJ (what 'make demo' runs)")
    p.add_argument("--output", default="demo_output")
    p.add_argument("--data", default=None, help="shared data folder (default: ../shared/data next to the project)")
    p.set_defaults(func=_demo)
