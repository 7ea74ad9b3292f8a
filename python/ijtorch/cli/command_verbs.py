"""Verbs for commands that no verb module writes by hand: a command with a ``verb`` runs on the
command line without a change in ``ijtorch.cli`` (``ijtorch normalize`` is one).

The verb takes TIFF inputs, ``--output``, ``--axes`` and the batch options, and the task options
generated from the command's model (:mod:`ijtorch.cli.generated`); it runs the command's ``compute``
on each input and writes its outputs as ImageJ files (:func:`write_command_outputs`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..commands.command import all_commands
from .batch import Batch, add_batch_options
from .generated import add_command_parser, cli_option, params_from_args

__all__ = ["add_verbs", "write_command_outputs"]
def write_command_outputs(folder: Path, stem: str, out: Any) -> list[Path]:
    """Write a command's :class:`~ijtorch.commands.outputs.CommandOutputs` as ImageJ files into
    ``folder``: each image as ``<title>.tif`` (calibrated ImageJ TIFF), the ROIs as
    ``<stem>_RoiSet.zip``, each table as ``<stem>_<title>.csv``, and the command's own files."""
    from ..io.outputs import write_table_csv
    from ..io.roiset import write_roiset
    from ..io.tiff import write_imagej_tiff

    def safe(text: str) -> str:
        return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "output"

    written = []
    for image in out.images:
        written.append(write_imagej_tiff(folder / f"{safe(image.title)}.tif", image.data, image.axes,
                                         calibration=image.calibration))
    if out.rois is not None:
        written.append(write_roiset(folder / f"{safe(stem)}_RoiSet.zip", out.rois.outlines,
                                    names=list(out.rois.names) if out.rois.names else None))
    for table in out.tables:
        written.append(write_table_csv(folder / f"{safe(stem)}_{safe(table.title)}.csv", table.columns))
    if out.files is not None:
        out.files.write(folder)
    return written


def _run_command_verb(args: argparse.Namespace) -> int:
    """A command's verb that no verb module writes by hand: the command's ``compute`` on each input
    TIFF, its outputs written as ImageJ files (:func:`write_command_outputs`)."""
    from ..commands.command import get_command
    from ..commands.outputs import CommandInputs
    from .verbs import _input_files, _read_image

    cmd = get_command(args.command_name)
    p = params_from_args(cmd.params, args)
    files = _input_files(args.inputs)
    out = Path(args.output)
    batch = Batch(cmd.verb or "", len(files), fail_fast=args.fail_fast, verbose=args.verbose, options=args)

    def one(path: Path, staging: Path) -> str:
        result = cmd.compute(CommandInputs(image=_read_image(path, args.axes), source_path=str(path)), p)
        written = write_command_outputs(staging, path.stem, result) if result is not None else []
        lines = [f"{path.name}: {result.status if result is not None and result.status else 'done'}"]
        lines += [f"  {line}" for line in (result.log if result is not None else ())]
        lines += [f"  -> {out / Path(w).name}" for w in written]
        return "\n".join(lines)

    batch.run(files, one, output=out, inputs=lambda path: [path])
    return batch.finish()


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    """A verb for each command with a ``verb`` that no verb module added: TIFF inputs, ``--output``,
    ``--axes``, the batch options and the task options generated from the command's model."""
    for cmd in all_commands().values():
        if not cmd.verb or cmd.verb in sub.choices:
            continue
        p = add_command_parser(sub, cmd.verb, help=(cmd.help or cmd.name).rstrip(".").split(";")[0])
        p.add_argument("inputs", nargs="+", help="TIFF files or folders of TIFFs")
        cli_option(p, "--output", required=True, reason="where the CLI writes its files",
                   help="folder for the command's images (<title>.tif), ROIs (<name>_RoiSet.zip) and tables (CSV)")
        cli_option(p, "--axes", default=None, reason="ImageJ and the server know the image's axes",
                   help="axes of the input when the TIFF does not say, e.g. TYX or ZYX")
        add_batch_options(p)
        p.set_defaults(func=_run_command_verb, command_name=cmd.name)
