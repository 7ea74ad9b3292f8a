"""The bioimage.io verbs of the CLI: ``export-bioimageio`` and ``import-bioimageio``.

``ijtorch export-bioimageio MODEL OUT.zip`` writes a bioimage.io package (format 0.5) of a
registered model or model folder and checks it with bioimageio.spec and bioimageio.core;
``ijtorch import-bioimageio PACKAGE.zip|FOLDER [--name NAME]`` registers a local package as an
ijtorch model in ``$IJTORCH_MODELS`` (see :mod:`ijtorch.bioimageio`); its options are generated from
the ``ijtorch Import bioimage.io Model`` command. Export stays hand-written: its test image, pixel
size and package name are files and values of the command line the ImageJ command does not take.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .generated import add_command_parser, params_from_args


def _export(args: argparse.Namespace) -> int:
    from .batch import UsageError
    from ..bioimageio.export import export_bioimageio

    test_image = None
    if args.test_image:
        import tifffile

        path = Path(args.test_image)
        if not path.is_file():
            raise UsageError(f"no such test image: {path}")
        test_image = tifffile.imread(path)
    out = Path(args.output)
    result = export_bioimageio(args.model, out, test_image=test_image, authors=args.author or None,
                               license=args.license, pixel_size=tuple(args.pixel_size) if args.pixel_size else None,
                               name=args.name, run_test=not args.no_test)
    test = result.test_status or "not run (--no-test)"
    print(f"{result.path}: {result.model_type} model; bioimageio.spec: {result.format_status}; "
          f"bioimageio.core test_model: {test} ({result.seconds:.1f} s)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from ..bioimageio.package_import import import_bioimageio
    from ..commands.bioimageio import ImportBioimageioParams, import_options

    p = params_from_args(ImportBioimageioParams, args)
    result = import_bioimageio(p.package, **import_options(p))
    print(f"{result.name}: imported as {result.model_type} ({result.weights_format} weights), run by "
          f"`ijtorch {result.task}` / {result.task}(); folder {result.path}")
    return 0


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("export-bioimageio", help="export a model as a bioimage.io package (.zip, format 0.5)")
    p.add_argument("model", help="registered model name or model folder")
    p.add_argument("output", help="the package .zip to write")
    p.add_argument("--test-image", default=None, help="TIFF used as the package's test input (default: synthetic)")
    p.add_argument("--author", action="append", help="author name; repeatable (default: the model's, else 'ijtorch')")
    p.add_argument("--license", default=None, help="SPDX licence id (default: the model's, else MIT)")
    p.add_argument("--pixel-size", type=float, nargs="+", default=None, metavar="UM",
                   help="pixel size in micrometres per spatial axis (y x, or z y x)")
    p.add_argument("--name", default=None, help="package name (default: the model's folder name)")
    p.add_argument("--no-test", action="store_true", help="skip bioimageio.core's model test (format check only)")
    p.set_defaults(func=_export)

    # the options of the ijtorch Import bioimage.io Model command, PACKAGE first
    p = add_command_parser(sub, "import-bioimageio", help="register a local bioimage.io package as an ijtorch model",
                           positional=("package",))
    p.set_defaults(func=_import)
