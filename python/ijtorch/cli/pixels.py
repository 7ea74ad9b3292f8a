"""The pixel-classification verb of the CLI: ``train-pixels``.

``ijtorch train-pixels IMAGES ANNOTATIONS --output MODEL`` trains (or, with ``--base-model``,
warm-starts) a pixel classifier from images and annotation TIFFs of class values (``0`` =
unannotated, ``1..C`` classes: sparse strokes or dense class images), the same
:func:`ijtorch.tasks.pixels.train_pixels` the ``ijtorch Train Pixel Classifier`` command calls.
Applying the model is ``ijtorch segment IMAGES --model MODEL --output DIR``: its label maps are
class maps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .generated import add_command_parser, cli_option, params_from_args


def _train_pixels(args: argparse.Namespace) -> int:
    from ..commands.pixels import TrainPixelsParams
    from ..errors import IjtorchError
    from ..tasks.pixels import train_pixels

    p = params_from_args(TrainPixelsParams, args)
    for role, given in (("IMAGES", args.images), ("ANNOTATIONS", args.annotations)):
        if not Path(given).exists():
            raise IjtorchError(f"{role} {given} does not exist")
    classes = [c.strip() for c in p.classes.split(",") if c.strip()] or None
    summary = train_pixels(args.images, args.annotations, output=args.output, classes=classes,
                           base_model=p.base_model or None, steps=p.steps, seed=p.seed, device=args.device)
    counts = ", ".join(f"{c}: {n}" for c, n in summary["annotated_pixels"].items())
    print(f"model saved to {summary['output']}")
    print(f"  classes: {', '.join(summary['classes'])} (annotated pixels {counts})")
    print(f"  steps: {summary['steps']} in {summary['seconds']:.2f} s; "
          f"train accuracy {summary['metrics']['train_accuracy']:.3f}")
    return 0


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = add_command_parser(sub, "train-pixels",
                           help="train a pixel classifier (a class per pixel) from sparse strokes or class images")
    p.add_argument("images", help="an image (YX, CYX or RGB; TIFF, PNG, ...) or a folder of them")
    p.add_argument("annotations", help="annotation image(s) with the same names (TIFF or PNG): 0 = unannotated, 1..C = classes")
    cli_option(p, "--output", required=True, help="model folder to write (apply it with 'ijtorch segment --model')",
               reason="a model folder on this machine (the ImageJ command's name is a user model)")
    cli_option(p, "--device", default="auto", help="auto, cpu, cuda or mps",
               reason="the device of this process (ImageJ's is set when it starts)")
    p.set_defaults(func=_train_pixels)
