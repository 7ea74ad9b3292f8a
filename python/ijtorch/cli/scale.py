"""``ijtorch segment-cluster --input FOLDER|IMAGE``: the ``ijtorch Segment on Cluster`` command on the
command line (its options generated from the command's model): a folder of images (TIFF, PNG, JPEG, ...) one task per image,
or one image larger than memory block by block, on a Dask cluster (:mod:`ijtorch.scale.submit`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .generated import add_command_parser, params_from_args

__all__ = ["add_verbs"]


def _segment_cluster(args: argparse.Namespace) -> int:
    from ..commands.command import get_command
    from ..commands.outputs import CommandInputs
    from ..core.progress import CountProgress, ProgressEvent

    cmd = get_command("ijtorch Segment on Cluster")
    p = params_from_args(cmd.params, args)
    if not p.input:
        raise ValueError("--input: give a folder of images or one big image (TIFF or OME-Zarr)")
    bars: dict[str, CountProgress] = {}

    def progress(event: ProgressEvent) -> None:  # files, or blocks of each phase, as the cluster finishes them
        if event.phase not in bars:
            for bar in bars.values():
                bar.close()
            unit = "file" if event.phase == "files" else "block"
            bars[event.phase] = CountProgress(f"segment-cluster: {event.phase}", event.n or None, unit=unit)
        bars[event.phase].update(to=event.i)

    try:
        out: Any = cmd.compute(CommandInputs(progress=progress), p)
    finally:
        for bar in bars.values():
            bar.close()
    for line in out.log:
        print(line, file=sys.stderr if ": WARNING" in line else sys.stdout, flush=True)
    return 1 if out.values.get("n_failed") else 0


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = add_command_parser(sub, "segment-cluster", help="segment a folder of images (one task per image) or one "
                                                        "image larger than memory (block by block) on a Dask cluster")
    p.set_defaults(func=_segment_cluster)
