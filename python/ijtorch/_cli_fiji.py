"""The Fiji verbs of the CLI: ``fiji`` (a Python-started Fiji.app) and ``install-fiji``.

Kept apart from the task verbs: these start or modify a Fiji installation rather than run a task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _fiji(args: argparse.Namespace) -> int:
    """Start a Fiji.app from Python with ijtorch's commands; show its UI, or run a macro/script headless."""
    import os

    from .bridge._fiji import fiji_gateway, find_fiji
    from .errors import IjtorchError

    try:
        path = find_fiji(args.fiji)
        if not args.headless and not os.environ.get("DISPLAY"):
            raise IjtorchError("no display (DISPLAY is unset): run with --headless, or from a desktop session")
        if not args.headless and (args.macro or args.script):
            raise IjtorchError("--macro and --script run headless batch jobs: add --headless")
        gateway = fiji_gateway(path)
        if args.macro:
            from .bridge import run_macro

            result = run_macro(Path(args.macro).read_text(), " ".join(args.arg or []))
            for text in (result.log, result.value):
                if text:
                    print(text)
        elif args.script:
            outputs = _run_fiji_script(gateway, Path(args.script), args.arg or [])
            for key, value in outputs.items():
                print(f"{key}={value}")
        elif args.headless:
            from .bridge import registered_commands

            print(f"Fiji {gateway.getVersion()} at {path} with ijtorch commands: {', '.join(registered_commands())}")
        else:
            _show_fiji_until_closed(gateway)
    except IjtorchError as exc:
        print(f"ijtorch fiji: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_fiji_script(gateway, script: Path, pairs: list[str]) -> dict:
    """Run any Fiji script language file through ImageJ2's ScriptService with key=value inputs."""
    from jpype import JClass

    from .errors import IjtorchError

    if not script.is_file():
        raise IjtorchError(f"no such script: {script}")
    inputs = JClass("java.util.HashMap")()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise IjtorchError(f"--arg {pair!r}: scripts take key=value arguments")
        inputs.put(key, value)
    module = gateway.script().run(JClass("java.io.File")(str(script.resolve())), True, inputs).get()
    return {str(k): str(v) for k, v in dict(module.getOutputs()).items() if v is not None}


def _show_fiji_until_closed(gateway) -> None:
    import time

    from jpype import JClass

    gateway.ui().showUI()
    IJ = JClass("ij.IJ")
    while IJ.getInstance() is not None and IJ.getInstance().isShowing():
        time.sleep(0.5)


def _install_fiji(args: argparse.Namespace) -> int:
    from .bridge._install import install_fiji, uninstall_fiji
    from .errors import IjtorchError

    try:
        if args.uninstall:
            kept = uninstall_fiji(args.fiji_path)
            print(f"ijtorch removed from {args.fiji_path}")
            for rel in kept:
                print(f"  kept (changed since install): {rel}")
        else:
            manifest = install_fiji(args.fiji_path, server=args.server)
            print(f"ijtorch installed into {args.fiji_path}: {len(manifest['files'])} files (manifest ijtorch-install.json)")
    except (IjtorchError, ValueError) as exc:
        print(f"ijtorch install-fiji: {exc}", file=sys.stderr)
        return 2
    return 0


def add_verbs(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("fiji", help="start a Fiji.app from Python with ijtorch's commands (UI, or --headless batch)")
    p.add_argument("--fiji", default=None, help="the Fiji.app folder (default: $IJTORCH_FIJI)")
    p.add_argument("--headless", action="store_true", help="show no UI: run --macro/--script (or just check) and exit")
    p.add_argument("--macro", default=None, help="an ImageJ macro (.ijm) to run (with --headless)")
    p.add_argument("--script", default=None, help="a Fiji script (.py, .ijm, .groovy...) run by ImageJ2 with #@ inputs")
    p.add_argument("--arg", action="append", help="macro argument, or key=value script input; repeatable")
    p.set_defaults(func=_fiji)

    p = sub.add_parser("install-fiji", help="install ijtorch's shim, Fiji scripts and macros into a Fiji.app")
    p.add_argument("fiji_path", help="the Fiji.app folder")
    p.add_argument("--uninstall", action="store_true", help="remove exactly what the last install wrote")
    p.add_argument("--server", default=None, help="URL of the ijtorch server Fiji should use when started without Python")
    p.set_defaults(func=_install_fiji)
