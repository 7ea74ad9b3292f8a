"""``python -m ijtorch.scale segment-big IMAGE --output DIR``: blockwise segmentation of one image
larger than memory on a Dask cluster (see :mod:`ijtorch.scale.blockwise`).

Exit codes as the ``ijtorch`` CLI: 0 done, 2 a user error (one line), 3 a bug (traceback), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from ..errors import IjtorchError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ijtorch.scale", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("segment-big", help="segment one 2D image or z-stack (plane by plane) larger than memory, block "
                                           "by block, to OME-Zarr")
    p.add_argument("image", help="a big TIFF (read lazily) or an OME-Zarr folder")
    p.add_argument("--output", required=True, help="folder for <name>.ome.zarr, <name>_measurements.csv, <name>_RoiSet.zip")
    p.add_argument("--model", default="nuclei", help="a 2D star-convex model (name or folder); default nuclei")
    p.add_argument("--channel", type=_positive, default=None, help="channel of a multi-channel image, from 1 as in ImageJ")
    p.add_argument("--block", type=_positive, default=1024, help="block edge in pixels, a multiple of 16 (default 1024): "
                                                                "sets the memory a worker needs")
    p.add_argument("--halo", type=_positive, default=128, help="context around each block (default 128 px; more than "
                                                              "the largest object plus the network's reach)")
    p.add_argument("--prob-threshold", type=float, default=None, help="default: the model's tuned value")
    p.add_argument("--nms-threshold", type=float, default=None, help="default: the model's tuned value")
    p.add_argument("--no-rois", action="store_true", help="do not write the RoiSet.zip (millions of objects)")
    p.add_argument("--dask", nargs="?", const="local", default="local", metavar="SCHEDULER",
                   help="local (default), a scheduler address, a scheduler file, 'slurm' or a jobqueue .yaml")
    p.add_argument("--dask-workers", type=_positive, default=None, metavar="N")
    p.add_argument("--dask-threads", type=_positive, default=1, metavar="N")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ..core.progress import CountProgress
        from .blockwise import segment_blockwise
        from .cluster import DaskOptions

        bars: dict[str, CountProgress] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in bars:
                for bar in bars.values():
                    bar.close()
                bars[phase] = CountProgress(f"segment-big: {phase}", total, unit="block")
            bars[phase].update(done - bars[phase].n)

        result = segment_blockwise(args.image, args.output, model=args.model,
                                   channel=None if args.channel is None else args.channel - 1, block=args.block,
                                   halo=args.halo, prob_threshold=args.prob_threshold,
                                   nms_threshold=args.nms_threshold, rois=not args.no_rois,
                                   dask=DaskOptions(args.dask, args.dask_workers, args.dask_threads),
                                   progress=progress)
        for bar in bars.values():
            bar.close()
        print(f"{args.image}: {result.n_objects} objects ({result.dtype}) in {result.n_blocks} blocks of {args.block} px, "
              f"{result.near_seams} across block seams, {result.merged_at_seams} seen from both sides kept once; "
              f"{result.seconds:.1f} s")
        for kind, path in result.files.items():
            print(f"  {kind}: {path}")
        return 0
    except KeyboardInterrupt:
        print("segment-big: interrupted", file=sys.stderr)
        return 130
    except (IjtorchError, ValueError, OSError, ImportError) as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"segment-big: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"segment-big: internal error ({type(exc).__name__}: {exc}); this is a bug in ijtorch", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
