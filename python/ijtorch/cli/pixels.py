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

from .batch import positive_int


def _train_pixels(args: argparse.Namespace) -> int:
    from ..errors import IjtorchError
    from ..tasks.pixels import train_pixels

    for role, given in (("IMAGES", args.images), ("ANNOTATIONS", args.annotations)):
        if not Path(given).exists():
            raise IjtorchError(f"{role} {given} does not exist")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    summary = train_pixels(args.images, args.annotations, output=args.output, classes=classes,
                           base_model=args.base_model, steps=args.steps, seed=args.seed, device=args.device)
    counts = ", ".join(f"{c}: {n}" for c, n in summary["annotated_pixels"].items())
    print(f"model saved to {summary['output']}")
    print(f"  classes: {', '.join(summary['classes'])} (annotated pixels {counts})")
    print(f"  steps: {summary['steps']} in {summary['seconds']:.2f} s; "
          f"train accuracy {summary['metrics']['train_accuracy']:.3f}")
    return 0


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("train-pixels", help="train a pixel classifier (a class per pixel) from sparse strokes or class images")
    p.add_argument("images", help="a TIFF (YX or CYX) or a folder of TIFFs")
    p.add_argument("annotations", help="annotation TIFF(s) with the same names: 0 = unannotated, 1..C = classes")
    p.add_argument("--output", required=True, help="model folder to write (apply it with 'ijtorch segment --model')")
    p.add_argument("--classes", default=None, help="comma-separated class names for values 1..C (default: class1, ...)")
    p.add_argument("--base-model", default=None, help="warm start from this pixel classifier (name or folder)")
    p.add_argument("--steps", type=positive_int, default=300, help="training steps (default 300, about a second)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.set_defaults(func=_train_pixels)
