"""Command line: ``ijtorch VERB INPUT... [options] --output DIR``.

Every verb calls the same task function as the ImageJ command and the server. The CLI is the
one place (with the Java shim) that configures logging output. Errors that escape a verb become
one line on stderr and an exit code (:mod:`ijtorch.cli.batch`: 2 for user errors, 3 for bugs;
``-v`` adds the traceback); batch verbs exit 1 when some of their inputs failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _doctor(args: argparse.Namespace) -> int:
    from ..doctor import run_doctor

    return run_doctor(fiji=args.fiji, stream=sys.stdout)


def _macro(args: argparse.Namespace) -> int:
    """Run a macro; the process then ends with its status, whatever windows or Java threads it left
    (bridge._batch.end_batch), or with 124 after ``--timeout`` seconds."""
    from .. import bridge
    from ..bridge._batch import Watchdog, end_batch
    from ..errors import IjtorchError, MacroError

    path = Path(args.file)
    if not path.is_file():
        print(f"ijtorch macro: no such macro file: {path}", file=sys.stderr)
        return 2
    status = 0
    with Watchdog(getattr(args, "timeout", None), f"ijtorch macro: {path.name}"):
        try:
            bridge.start(fiji=args.fiji)
            result = bridge.run_macro(path.read_text(), " ".join(args.arg or []))
            if result.log:
                print(result.log)
            if result.value:
                print(result.value)
        except MacroError as exc:
            from ..bridge._macro import log_text

            printed = log_text()
            if printed:
                print(printed.rstrip("\n"))
            print(f"ijtorch macro: {path.name}: {exc}", file=sys.stderr)
            status = 1
        except IjtorchError as exc:
            print(f"ijtorch macro: {exc}", file=sys.stderr)
            status = 2
    if not bridge.is_started():
        return status
    end_batch(status)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="ijtorch", description="Deep learning for microscopy, from Fiji/ImageJ and Python.")
    parser.add_argument("--version", action="version", version=f"ijtorch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("doctor", help="check Java, ImageJ, the shim, torch and the display")
    p.add_argument("--fiji", help="a Fiji.app to check instead of the embedded ImageJ (default: $IJTORCH_FIJI)")
    p.set_defaults(func=_doctor)

    p = sub.add_parser("macro", help="run an ImageJ macro (.ijm) in the embedded ImageJ with ijtorch commands")
    p.add_argument("file", help="the .ijm file")
    p.add_argument("--arg", action="append", help="argument passed to the macro (getArgument()); repeatable, joined by spaces")
    p.add_argument("--fiji", help="use this Fiji.app's jars (default: $IJTORCH_FIJI, else embedded)")
    p.set_defaults(func=_macro)

    from . import bioimageio, fiji, pixels, scale, verbs
    from ..serve import _main as serve_main

    # Each verb module adds its own sub-parsers; a new family of verbs adds its module here.
    for verb_module in (verbs, fiji, bioimageio, pixels, scale):
        verb_module.add_verbs(sub)
    from . import command_verbs

    command_verbs.add_verbs(sub)  # a command with a verb that no module above writes by hand
    p = sub.add_parser("serve", help="serve models over HTTP to many Fiji/Python clients (loopback by default)")
    serve_main.add_arguments(p)
    p.set_defaults(func=serve_main.serve)
    for verb_parser in sub.choices.values():  # `ijtorch VERB ... -v` works as well as `ijtorch -v VERB ...`
        if "-v" not in verb_parser._option_string_actions:
            verb_parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                     help="more log output, and the traceback of each error (-vv for debug)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the verb; errors become one stderr line and an exit code (see :mod:`ijtorch.cli.batch`)."""
    from .batch import run_verb

    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run_verb(args.verb, lambda: args.func(args), verbose=args.verbose)
