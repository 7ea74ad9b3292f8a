"""The task verbs of the CLI: segment, train, evaluate, track, restore, denoise, classify, ...

Each verb calls the same task function as the ImageJ command and the server. The verbs of a command
(segment, track, restore, denoise, classify, embed) take their task options from the command's
parameter model (:mod:`ijtorch.cli.generated`) and translate them as the command does
(``segment_options``, ``track_options``, ``restore_options`` in :mod:`ijtorch.commands`); their inputs,
``--output``, ``--axes``, ``--device`` and batch options are the CLI's own (:func:`cli_option`).
The training verbs (train, train-restoration, train-classifier) read folders and write a model
folder, which the ImageJ training commands (ROI Manager, open images, user model names) do not; their
options stay hand-written here. Verbs that take inputs run them through
:class:`ijtorch.cli.batch.Batch` (one input at a time, failures reported in one line, outputs staged
so a failed input leaves none, a summary, exit code 1 when any failed). Channels are numbered from 1
on the command line, as in ImageJ; :func:`ijtorch.commands.command.task_channel` converts them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .batch import Batch, Skip, UsageError, add_batch_options, positive_int
from .generated import add_command_parser, cli_option, params_from_args


def _input_files(inputs: list[str]) -> list[Path]:
    """The image files given (TIFF, PNG, JPEG, BMP, GIF, WebP), folders expanded (sorted); a missing
    input, an empty folder, or two inputs whose outputs would share a name (``a.tif`` and ``a.png``:
    outputs are named by the input's stem) is a usage error."""
    from ..io.raster import IMAGE_SUFFIXES, image_files

    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = image_files(path)
            if not found:
                raise UsageError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"input {path} does not exist")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise UsageError(f"inputs {stems[f.stem]} and {f} would write outputs of the same name ({f.stem}.*): "
                             "rename one or run them separately")
        stems[f.stem] = f
    return list(dict.fromkeys(files))


def _read_image(path: Path, axes: str | None = None):
    """The file as an :class:`~ijtorch.image.Image` (TIFF with tifffile; PNG, JPEG, ... with
    :func:`ijtorch.io.raster.read_raster`); ``--axes`` names the axes when the file does not (a plain
    TIFF whose axes tifffile cannot map is then read as a bare array)."""
    import tifffile

    from ..image import Image, check_axes
    from ..io.raster import RASTER_SUFFIXES, read_image

    try:
        image = read_image(path)
    except ValueError:
        if not axes or path.suffix.lower() in RASTER_SUFFIXES:
            raise
        data = tifffile.imread(path)
        return Image(data, check_axes(axes, data.ndim, arg_name="--axes"), title=path.stem)
    if axes:
        from dataclasses import replace

        image = replace(image, axes=check_axes(axes, image.data.ndim, arg_name="--axes"))
    return image


def _check_channel(data_shape: tuple[int, ...], axes: str, channel: int) -> None:
    """Say in the CLI's terms what is wrong with ``--channel`` (1-based, as in ImageJ; the default 1
    is the first channel, or the only plane of an image without channels)."""
    if "C" not in axes:
        if channel != 1:
            raise ValueError(f"--channel {channel}: the image has no channel axis (axes {axes})")
        return
    n = data_shape[axes.index("C")]
    if channel > n:
        raise ValueError(f"--channel {channel}: the image has {n} channel(s), numbered 1..{n}")


def _resolve_model(name: str) -> None:
    """Fail before the batch when the model does not exist (not once per input)."""
    from ..models.store import resolve_model

    resolve_model(name)


def _training_progress(desc: str, steps_per_epoch: int | None = None):
    from ..core.progress import TrainingProgress

    return TrainingProgress(desc, steps_per_epoch=steps_per_epoch)


# ----------------------------------------------------------------------------- segment / train / evaluate
def _segment(args: argparse.Namespace) -> int:
    from collections import Counter

    from ..commands.segment import SegmentParams, segment_options
    from ..models.auto import candidates, is_auto
    from ..tasks.segmentation_files import write_segmentation_outputs
    from ..tasks.segment import segment

    p = params_from_args(SegmentParams, args)
    files = _input_files(args.inputs)
    if is_auto(p.model):
        candidates("nuclei")  # fails before the batch when there is none
    else:
        _resolve_model(p.model)
    out = Path(args.output)
    batch = Batch("segment", len(files), fail_fast=args.fail_fast, verbose=args.verbose, options=args)
    objects: dict[str, int] = {}  # per input; summed over the inputs that were done
    used: dict[str, str] = {}  # per input: the model model=auto chose
    warned: set[str] = set()  # inputs with a dataset-shift warning

    def one(path: Path, staging: Path) -> str:
        image = _read_image(path, args.axes)
        _check_channel(image.data.shape, image.axes, p.channel)
        started = time.perf_counter()
        result = segment(image.data, image.axes, **segment_options(p, image.axes), device=args.device)
        write_segmentation_outputs(staging, path.stem, image, result.labels, result.axes,
                                   confidence=getattr(result, "confidence", None))
        objects[str(path)] = result.n_objects
        if getattr(result, "shift_warning", None):
            warned.add(str(path))
            print(f"WARNING {path.name}: {result.shift_warning}", file=sys.stderr, flush=True)
        chosen = ""
        if result.model_choice:
            used[str(path)] = result.model
            score = "" if result.shift_score is None else f", shift score {result.shift_score:.2f}"
            chosen = f" (model {result.model}{score})"
        return (f"{path.name}: {result.n_objects} objects{chosen} in {time.perf_counter() - started:.2f} s "
                f"-> {out / (path.stem + '.tif')}")

    batch.run(files, one, output=out, inputs=lambda path: [path])
    shifted = sum(name in warned for name in batch.done)
    counts = Counter(used[name] for name in batch.done if name in used)
    models = f"model {p.model}" + (f" ({', '.join(f'{m}: {n}' for m, n in sorted(counts.items()))})" if counts else "")
    batch.say(f"{len(batch.done)} image(s), {sum(objects[name] for name in batch.done)} objects, {models}"
              + (f"; {shifted} image(s) with a dataset-shift warning (results unreliable, see above)" if shifted else ""))
    return batch.finish()


def _train(args: argparse.Namespace) -> int:
    from ..tasks.segment import train_segmentation

    progress = _training_progress("train", args.steps)
    summary = train_segmentation(args.images, args.labels, output=args.output, method=args.method,
                                 base_model=args.base_model, epochs=args.epochs, steps_per_epoch=args.steps,
                                 patch_size=args.patch_size, batch_size=args.batch_size, resume=args.resume,
                                 device=args.device, val_fraction=args.val_fraction, seed=args.seed,
                                 progress=progress, progress_bar=False)
    progress.close()
    metrics = summary.get("metrics", {})
    print(f"model saved to {summary['output']}")
    for key, value in metrics.items():
        print(f"  {key}: {value}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import instance as metrics
    from ..tasks.evaluate import CSV_NAME, format_table

    pred_files = metrics._index_dir(Path(args.pred_dir), "pred_dir")
    gt_files = metrics._index_dir(Path(args.gt_dir), "gt_dir")
    if not set(pred_files) & set(gt_files):
        hint = f"; did you mean {Path(args.gt_dir) / 'labels'}?" if (Path(args.gt_dir) / "labels").is_dir() else ""
        raise UsageError(f"no file names in common between {args.pred_dir} ({len(pred_files)} label files) and "
                         f"{args.gt_dir} ({len(gt_files)} label files){hint}")
    thresholds = metrics.DEFAULT_THRESHOLDS
    batch = Batch("evaluate", len(pred_files), fail_fast=args.fail_fast, verbose=args.verbose, options=args)
    rows: list[dict[str, Any]] = []

    def one(name: str) -> None:
        if name not in gt_files:
            raise Skip(f"no ground truth of that name in {args.gt_dir}")
        gt, pred = metrics.read_label_image(gt_files[name]), metrics.read_label_image(pred_files[name])
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth has shape {gt.shape} but the prediction has shape {pred.shape}")
        rows.append({"name": name, **metrics.evaluate_pair(gt, pred, thresholds=thresholds)})

    batch.run(sorted(pred_files), one, name=lambda n: str(pred_files[n]))
    if rows:
        all_rows = rows + metrics._summaries(rows, tuple(thresholds))
        table = {"rows": rows, "mean": all_rows[-2], "pooled": all_rows[-1], "thresholds": tuple(thresholds)}
        batch.say(format_table(table))
        if args.output is not None:
            out = Path(args.output)
            if out.exists() and not out.is_dir():
                raise UsageError(f"--output {out} exists and is not a folder")
            batch.say(f"written: {metrics.write_csv(all_rows, out / CSV_NAME)}")
    return batch.finish()


def _track(args: argparse.Namespace) -> int:
    import numpy as np

    from ..commands.track import TrackParams, track_options
    from ..image import check_axes
    from ..io.raster import read_image
    from ..tasks.track import linking_summary, n_tracklets, n_tracks, track_movie, write_track_outputs

    p = params_from_args(TrackParams, args)
    source = Path(args.input)
    if not source.exists():
        raise UsageError(f"input {source} does not exist")
    frame_files = _input_files([str(source)]) if source.is_dir() else []
    if not p.labels:
        _resolve_model(p.model)
    out = Path(args.output)
    batch = Batch("track", 1, verbose=args.verbose)

    def one(source: Path, staging: Path) -> str:
        if source.is_dir():  # a folder of frames, e.g. a Cell Tracking Challenge TRA folder
            frames = [read_image(p) for p in frame_files]
            shapes = {f.data.shape for f in frames}
            if len(shapes) > 1:
                raise ValueError(f"the frames differ in shape: {sorted(shapes)}")
            data, axes, calibration = np.stack([f.data for f in frames]), "T" + frames[0].axes, frames[0].calibration
        else:
            movie = _read_image(source, args.axes)
            data, axes, calibration = movie.data, movie.axes, movie.calibration
        if args.axes and source.is_dir():
            axes = check_axes(args.axes, data.ndim, arg_name="--axes")
        if not p.labels:
            _check_channel(data.shape, axes, p.channel)
        from ..core.progress import PhaseProgress

        progress = PhaseProgress({"plane": f"track: segment {source.name}", "link": f"track: link {source.name}"})
        try:
            tracks = track_movie(data, axes, **track_options(p, axes), calibration=calibration, progress=progress)
        finally:
            progress.close()
        paths = write_track_outputs(staging, source.stem, tracks, image_path=source if source.is_file() else None)
        # tracks as TrackMate counts them (a dividing cell and its daughters are one track)
        lines = [f"{source.name}: {len(tracks.spots['id'])} detections, {n_tracks(tracks)} tracks "
                 f"({n_tracklets(tracks)} CTC tracklets), {tracks.n_divisions} divisions",
                 f"  {linking_summary(tracks)}"]
        lines += [f"  {kind}: {out / Path(path).relative_to(staging)}" for kind, path in paths.items()]
        return "\n".join(lines)

    batch.run([source], one, output=out, inputs=lambda s: [s, *frame_files])
    return batch.finish()


# ----------------------------------------------------------------------------- restore / denoise
def _yx_planes(data, axes: str) -> list:
    """Every ``YX`` plane of a channel-free image (2D Noise2Void trains on planes)."""
    import numpy as np

    others = [i for i, a in enumerate(axes) if a not in "YX"]
    stack = np.transpose(data, others + [axes.index("Y"), axes.index("X")])
    return list(stack.reshape((-1,) + stack.shape[-2:]))


def _train_n2v(planes: list, model_dir: Path, args: argparse.Namespace, p: Any, desc: str):
    """Train one Noise2Void model on ``planes`` into ``model_dir``; return it loaded."""
    import tempfile

    from ..models.device import resolve_device
    from ..models.restoration import RestorationModel
    from ..tasks.restore_train import train_restoration

    progress = _training_progress(desc, p.steps)
    with tempfile.TemporaryDirectory(prefix="ijtorch-n2v-checkpoints-") as checkpoints:
        train_restoration("n2v", planes, None, output=model_dir, axes="YX", epochs=p.epochs,
                          steps_per_epoch=p.steps, device=args.device, checkpoint_dir=checkpoints,
                          progress=progress, progress_bar=False)
    progress.close()
    return RestorationModel.load(model_dir, device=resolve_device(args.device))


def _restore(args: argparse.Namespace) -> int:
    import tempfile

    from ..commands.command import task_channel
    from ..commands.restore import DenoiseN2VParams, N2VMode, RestoreParams, restore_options
    from ..io.tiff import write_imagej_tiff
    from ..tasks.restore import denoise_training_items, restore

    if args.verb == "restore":
        p: Any = params_from_args(RestoreParams, args)
    else:  # Noise2Void: trained here on the inputs unless --model names a saved model
        p = params_from_args(DenoiseN2VParams, args, mode=N2VMode.apply if args.model else N2VMode.train)
    files = _input_files(args.inputs)
    if p.model:
        _resolve_model(p.model)
    train_here = args.verb == "denoise" and p.mode == N2VMode.train
    per_image = train_here and args.per_image
    if not train_here and (getattr(args, "per_image", False) or getattr(args, "save_model", None)):
        raise UsageError("--per-image and --save-model are for training Noise2Void here: leave out --model")
    out = Path(args.output)
    batch = Batch(args.verb, len(files), fail_fast=args.fail_fast, verbose=args.verbose, options=args)
    scratch = tempfile.TemporaryDirectory(prefix="ijtorch-denoise-")
    images: dict[Path, Any] = {}
    model: Any = p.model
    model_text = f"model {p.model}"

    def read(path: Path):
        image = _read_image(path)
        _check_channel(image.data.shape, image.axes, p.channel)
        return image  # RGB: each channel restored alone (tasks.restore.restore)

    def load(path: Path) -> None:  # shared model: every input is read before training on all of them
        images[path] = read(path)

    def planes_of(image) -> list:
        items, axes = denoise_training_items(image.data, image.axes, task_channel(p.channel, image.axes))
        return [plane for item in items for plane in _yx_planes(item, axes)]

    def one(path: Path, staging: Path) -> str:
        image = images.pop(path) if path in images else read(path)
        net, text = model, model_text
        if per_image:
            kept = Path(args.save_model) / path.stem if args.save_model else Path(scratch.name) / path.stem
            net = _train_n2v(planes_of(image), kept, args, p, f"denoise {path.name}")
            text = f"its own Noise2Void model, trained on this image{f', saved to {kept}' if args.save_model else ''}"
        if args.verb == "restore":
            result = restore(image.data, image.axes, **restore_options(p, image.axes), device=args.device)
        else:  # the uncertainty and error maps of the restore step are the CLI's own options here
            result = restore(image.data, image.axes, model=net, channel=task_channel(p.channel, image.axes),
                             device=args.device, uncertainty=args.uncertainty, error_map=args.error_map)
        if result.shift_warning:
            batch.warn(f"warning: {path.name}: {result.shift_warning}")
        for suffix, data in (("", result.restored), ("_uncertainty", result.uncertainty),
                             ("_error_map", result.error_map)):
            if data is not None:
                write_imagej_tiff(staging / f"{path.stem}{suffix}.tif", data.astype("float32"), result.axes,
                                  calibration=image.calibration, source=path)
        return f"{path.name} -> {out / (path.stem + '.tif')} ({text})"

    try:
        todo = files
        if train_here and not per_image:  # one model for all inputs, as Noise2Void is meant to be used
            todo = batch.run(files, load, final=False)
            if todo:
                model_dir = Path(args.save_model) if args.save_model else Path(scratch.name) / "n2v"
                planes = [p for path in todo for p in planes_of(images[path])]
                started = time.perf_counter()
                model = _train_n2v(planes, model_dir, args, p, "denoise")
                kept = f"saved to {model_dir}" if args.save_model else "not kept (--save-model DIR keeps it)"
                batch.say(f"denoise: one Noise2Void model trained on {len(todo)} image(s) ({len(planes)} planes), "
                          f"{p.epochs} epoch(s) x {p.steps} steps in {time.perf_counter() - started:.1f} s; {kept}")
                model_text = f"the Noise2Void model trained on all {len(todo)} input(s)"
        batch.run(todo, one, output=out, inputs=lambda path: [path])
    finally:
        scratch.cleanup()
    return batch.finish()


def _train_restoration(args: argparse.Namespace) -> int:
    from ..tasks.restore_train import train_restoration

    progress = _training_progress("train-restoration", args.steps)
    summary = train_restoration(args.kind, args.inputs, args.targets, output=args.output, epochs=args.epochs,
                                steps_per_epoch=args.steps, base_model=args.base_model, progress=progress,
                                progress_bar=False)
    progress.close()
    print(f"model saved to {summary.get('output', args.output)}")
    if summary.get("base_model"):
        print(f"  fine-tuned from: {summary['base_model']}")
    for key, value in summary.items():
        if key not in ("output", "base_model") and not isinstance(value, (list, dict)):
            print(f"  {key}: {value}")
    return 0


# ----------------------------------------------------------------------------- classify / embed / train-classifier
def _classify_data(path: Path):
    import numpy as np

    if not path.exists():
        raise UsageError(f"input {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path} has no 'images' array (it holds {sorted(z.files)})")
            return z["images"], (z["labels"] if "labels" in z else None), [str(c) for c in z["classes"]] if "classes" in z else None
    from ..tasks.classify import load_class_folders

    images, labels, classes, _ = load_class_folders(path)
    return images, labels, classes


def _classify(args: argparse.Namespace) -> int:
    import numpy as np

    from ..commands.classify import ClassifyParams, EmbedParams
    from ..io.outputs import write_table_csv
    from ..tasks.classify import classify, cluster_embeddings, embed, write_features

    p: Any = params_from_args(EmbedParams if args.verb == "embed" else ClassifyParams, args)
    source = Path(args.input)
    if not source.exists():
        raise UsageError(f"input {source} does not exist")
    _resolve_model(p.model)
    out = Path(args.output)
    batch = Batch(args.verb, 1, verbose=args.verbose)

    def one(source: Path, staging: Path) -> str:
        images, _, _ = _classify_data(source)
        if args.verb == "embed":
            features = embed(images, model=p.model)
            columns = None
            if p.clusters:  # as the ijtorch Embed command: k-means cluster and a 2-D PCA projection
                if p.clusters > len(images):
                    raise ValueError(f"--clusters {p.clusters} is more than the {len(images)} items")
                cl = cluster_embeddings(features, k=p.clusters)
                columns = {"cluster": cl.labels, "pc1": cl.projection[:, 0], "pc2": cl.projection[:, 1]}
            write_features(staging / "features.csv", features, columns=columns)
            return f"{len(images)} feature vectors -> {out / 'features.csv'}"
        result = classify(images, model=p.model)
        columns = {"item": np.arange(len(images)), "class": np.asarray(result["class"]),
                   "confidence": np.asarray(result["confidence"])}
        for i, name in enumerate(result["classes"]):
            columns[f"p_{name}"] = np.asarray(result["probabilities"])[:, i]
        if "shift_score" in result:  # per item, against the model's calibrated threshold
            columns["shift_score"] = np.asarray(result["shift_score"])
        write_table_csv(staging / "classes.csv", columns)
        if result["shift"].warning:
            print(f"WARNING {source.name}: {result['shift'].warning}", file=sys.stderr, flush=True)
            return (f"{len(images)} items classified -> {out / 'classes.csv'}; dataset-shift warning (results "
                    "unreliable, see above)")
        return f"{len(images)} items classified -> {out / 'classes.csv'}"

    batch.run([source], one, output=out, inputs=lambda s: [s])
    return batch.finish()


def _train_classifier(args: argparse.Namespace) -> int:
    images, labels, classes = _classify_data(Path(args.input))
    if labels is None:
        raise UsageError(f"{args.input} has no 'labels' array: training needs one class label per image")
    from ..tasks.classify import train_classifier

    progress = _training_progress("train-classifier")
    summary = train_classifier(images, labels, classes=classes, output=args.output, base_model=args.base_model,
                               epochs=args.epochs, seed=args.seed, progress=progress)
    progress.close()
    print(f"model saved to {summary.get('output', args.output)}")
    for key, value in (summary.get("metrics") or {}).items():
        if not isinstance(value, (list, dict)):
            print(f"  {key}: {value}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from ..models.store import list_models

    for entry in list_models():
        print(f"{entry['name']:<24} {entry.get('source', ''):<8} {entry.get('model_type', '')}  {entry.get('path', '')}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(output=Path(args.output), data=Path(args.data) if args.data else None)


# ----------------------------------------------------------------------------- the parsers
def _output(p: argparse.ArgumentParser, text: str) -> None:
    cli_option(p, "--output", required=True, help=text, reason="where the CLI writes its files")


def _axes(p: argparse.ArgumentParser, example: str) -> None:
    cli_option(p, "--axes", default=None, help=f"axes of the input when the TIFF does not say, {example}",
               reason="ImageJ and the server know the image's axes")


def _device(p: argparse.ArgumentParser) -> None:
    cli_option(p, "--device", default="auto", help="auto, cpu, cuda or mps",
               reason="the device of this process (ImageJ's and the server's are set when they start)")


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    from ..commands.classify import TrainClassifierParams
    from ..commands.restore import TrainRestorationParams
    from ..commands.segment import TrainSegmentationParams
    from ..tasks.restore import KINDS
    from ..tasks.segment import METHODS

    p = add_command_parser(sub, "segment", help="instance segmentation of TIFF files or folders")
    p.add_argument("inputs", nargs="+", help="TIFF files or folders of TIFFs")
    _output(p, "folder for <name>.tif label maps, RoiSet zips, CSVs, overlays")
    _axes(p, "e.g. TYX or ZYX")
    _device(p)
    add_batch_options(p)
    p.set_defaults(func=_segment)

    p = sub.add_parser("train", help="train (or fine-tune) an instance segmentation model from image/label folders")
    p.add_argument("images", help="folder of images")
    p.add_argument("labels", help="folder of label maps with the same file names")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--method", default=None, choices=METHODS,
                   help="model family: stardist (star-convex, nuclei) or unet_watershed (U-Net + seeded watershed: "
                        "touching whole cells, bacteria); default: that of --base-model, else stardist")
    p.add_argument("--base-model", default=None, help="fine-tune from this model (name or folder)")
    # the same defaults as ijtorch Train Segmentation (one declaration, in the command's model)
    train_fields = TrainSegmentationParams.model_fields
    p.add_argument("--epochs", type=positive_int, default=train_fields["epochs"].default,
                   help=train_fields["epochs"].description)
    p.add_argument("--steps", type=positive_int, default=train_fields["steps"].default,
                   help=train_fields["steps"].description)
    p.add_argument("--patch-size", type=positive_int, default=None,
                   help="training patch edge (default: 128 in 2D, 96 in 3D; unet_watershed 256)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="patches per step (default: 8 in 2D, 2 in 3D; unet_watershed 4)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="compare predicted label maps with ground truth (AP, F1, splits, merges)")
    p.add_argument("pred_dir", help="folder of predicted label maps")
    p.add_argument("gt_dir", help="folder of ground-truth label maps with the same file names")
    p.add_argument("--output", default=None, help="folder for evaluation.csv")
    add_batch_options(p)
    p.set_defaults(func=_evaluate)

    p = add_command_parser(sub, "track", help="track objects through a time-lapse TIFF or a folder of frames")
    p.add_argument("input", help="time-lapse TIFF (T axis) or a folder of frame TIFFs (e.g. a CTC TRA folder)")
    _output(p, "folder for TrackMate XML/CSV, CTC result, GEFF, statistics")
    _axes(p, "e.g. TYX")
    p.set_defaults(func=_track)

    for verb, text in (("restore", "restore images with a CARE / Noise2Void / artificial-labelling model"),
                       ("denoise", "Noise2Void: train one model on all the noisy inputs and denoise each (or apply --model)")):
        p = add_command_parser(sub, verb, help=text)
        p.add_argument("inputs", nargs="+", help="TIFF files or folders")
        _output(p, "folder for <name>.tif (32-bit) and optional maps")
        _device(p)
        if verb == "denoise":
            why = "the restore step of the CLI's batch; the ImageJ command shows the denoised image only"
            cli_option(p, "--uncertainty", action="store_true", reason=why,
                       help="also write <name>_uncertainty.tif (test-time augmentation std)")
            cli_option(p, "--error-map", action="store_true", reason=why,
                       help="also write <name>_error_map.tif (re-degradation error)")
            cli_option(p, "--per-image", action="store_true", reason="batch behaviour (ImageJ denoises one image)",
                       help="train a separate model on each image (slower; default: one model for all inputs)")
            cli_option(p, "--save-model", default=None, metavar="DIR",
                       reason="a folder on this machine (the ImageJ command's save_as names a user model)",
                       help="keep the trained Noise2Void model in DIR (with --per-image: DIR/<name>)")
        add_batch_options(p)
        p.set_defaults(func=_restore)

    p = sub.add_parser("train-restoration", help="train CARE / N2V / N2N / artificial labelling from folders")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("inputs", help="folder of inputs (noisy / low SNR / source channel)")
    p.add_argument("targets", nargs="?", default=None, help="folder of targets with the same names (not for n2v)")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--base-model", default=None,
                   help="fine-tune this restoration model (name or folder) of the same kind instead of starting afresh")
    restoration_fields = TrainRestorationParams.model_fields  # the defaults of ijtorch Train Restoration
    p.add_argument("--epochs", type=positive_int, default=restoration_fields["epochs"].default,
                   help=restoration_fields["epochs"].description)
    p.add_argument("--steps", type=positive_int, default=restoration_fields["steps"].default,
                   help=restoration_fields["steps"].description)
    p.set_defaults(func=_train_restoration)

    for verb, text in (("classify", "classify images/crops (.npz with 'images', or class folders) with a classifier"),
                       ("embed", "export one feature vector per image/crop (CSV) for clustering")):
        p = add_command_parser(sub, verb, help=text)
        p.add_argument("input", help=".npz with images (N,C,Y,X) or a folder of class sub-folders")
        _output(p, "folder for classes.csv / features.csv")
        p.set_defaults(func=_classify)

    p = sub.add_parser("train-classifier", help="train a classifier from an .npz (images, labels, classes) or class folders")
    p.add_argument("input", help=".npz with images, labels (and classes), or a folder of class sub-folders")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--base-model", default=None, help="fine-tune: reuse this model's backbone with a new head")
    classifier_epochs = TrainClassifierParams.model_fields["epochs"]  # the default of ijtorch Train Classifier
    p.add_argument("--epochs", type=positive_int, default=classifier_epochs.default, help=classifier_epochs.description)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser("models", help="list bundled and user models")
    p.set_defaults(func=_models)

    p = sub.add_parser("demo", help="segment sample nuclei in the embedded ImageJ (what 'make demo' runs)")
    p.add_argument("--output", default="demo_output")
    p.add_argument("--data", default=None, help="a folder with images/ and labels/, or the shared data folder "
                                                "(default: the samples bundled with ijtorch)")
    p.set_defaults(func=_demo)
