"""The Fiji verbs of the CLI: ``fiji`` (a Python-started Fiji.app) and ``install-fiji``.

Kept apart from the task verbs: these start or modify a Fiji installation rather than run a task.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_TIMEOUT = 600.0  # seconds: the watchdog of batch runs (--timeout)


def _fiji(args: argparse.Namespace) -> int:
    """Start a Fiji.app from Python with ijtorch's commands; show its UI, or run a macro/script headless.

    ``--headless`` runs in a headless JVM (``java.awt.headless=true``: no X display, no Xvfb), as
    Fiji's own ``--headless``; the process then ends with the macro's/script's status once it is
    done (open windows or Java threads left behind do not keep it alive), or after ``--timeout``.
    """
    import os

    from ..bridge._batch import Watchdog, end_batch
    from ..bridge._fiji import fiji_gateway, find_fiji
    from ..errors import IjtorchError, MacroError

    status = 0
    started = False
    with Watchdog(args.timeout if args.headless else None, "ijtorch fiji"):
        try:
            path = find_fiji(args.fiji)
            if not args.headless and not os.environ.get("DISPLAY"):
                raise IjtorchError("no display (DISPLAY is unset): run with --headless, or from a desktop session")
            if not args.headless and (args.macro or args.script):
                raise IjtorchError("--macro and --script run headless batch jobs: add --headless")
            started = True
            gateway = fiji_gateway(path, headless=args.headless)
            if args.macro:
                from ..bridge import run_macro

                macro = Path(args.macro)
                if not macro.is_file():
                    raise IjtorchError(f"no such macro file: {macro}")
                try:
                    result = run_macro(macro.read_text(), " ".join(args.arg or []))
                except MacroError as exc:
                    print(f"ijtorch fiji: {macro.name}: {exc}", file=sys.stderr)
                    status = 1
                else:
                    for text in (result.log, result.value):
                        if text:
                            print(text)
            elif args.script:
                outputs = _run_fiji_script(gateway, Path(args.script), args.arg or [])
                for key, value in outputs.items():
                    print(f"{key}={value}")
            elif args.headless:
                from ..bridge import registered_commands

                print(f"Fiji {gateway.getVersion()} at {path} with ijtorch commands: {', '.join(registered_commands())}")
            else:
                _show_fiji_until_closed(gateway)
        except IjtorchError as exc:
            print(f"ijtorch fiji: {exc}", file=sys.stderr)
            status = 2
        except Exception as exc:  # a script's Java exception: report it, still end the process
            print(f"ijtorch fiji: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
    if started and args.headless:
        end_batch(status)
    return status


def _run_fiji_script(gateway, script: Path, pairs: list[str]) -> dict:
    """Run any Fiji script language file through ImageJ2's ScriptService with key=value inputs."""
    from jpype import JClass

    from ..errors import IjtorchError

    if not script.is_file():
        raise IjtorchError(f"no such script: {script}")
    inputs = JClass("java.util.HashMap")()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise IjtorchError(f"--arg {pair!r}: scripts take key=value arguments")
        inputs.put(key, value)
    # the script's own error writer: SciJava prints a failing script's exception there (else it only logs
    # it and the run "succeeds" without outputs)
    module = gateway.module().createModule(gateway.script().getScript(JClass("java.io.File")(str(script.resolve()))))
    errors = JClass("java.io.StringWriter")()
    module.setErrorWriter(errors)
    module = gateway.module().run(module, True, inputs).get()
    text = str(errors.toString()).strip()
    if "Exception" in text or "Traceback" in text:
        import re

        found = re.search(r"^[A-Za-z_][\w.]*(?:Error|Exception)\b.*$", text, re.M)  # "ValueError: ..."
        message = found.group(0) if found else text.splitlines()[0]
        raise IjtorchError(f"{script.name} failed: {message}\n{text}")
    if text:
        print(text, file=sys.stderr)
    return {str(k): str(v) for k, v in dict(module.getOutputs()).items() if v is not None}


def _show_fiji_until_closed(gateway) -> None:
    import time

    from jpype import JClass

    gateway.ui().showUI()
    IJ = JClass("ij.IJ")
    while IJ.getInstance() is not None and IJ.getInstance().isShowing():
        time.sleep(0.5)


def _install_fiji(args: argparse.Namespace) -> int:
    from ..bridge._install import install_fiji, uninstall_fiji
    from ..errors import IjtorchError

    try:
        if args.uninstall:
            kept = uninstall_fiji(args.fiji_path)
            print(f"ijtorch removed from {args.fiji_path}")
            for rel in kept:
                print(f"  kept (changed since install): {rel}")
        else:
            manifest = install_fiji(args.fiji_path, server=args.server)
            print(f"ijtorch installed into {args.fiji_path}: {len(manifest['files'])} files (manifest ijtorch-install.json)")
            left = manifest["needs_python"]
            print("Plugins > ijtorch lists the commands the server runs; these need Python in the Fiji process "
                  f"(start it with: ijtorch fiji --fiji {args.fiji_path}): "
                  + ", ".join(left["commands"] + left["scripts"]))
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
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"with --headless: stop (exit 124) when the run takes longer (default {DEFAULT_TIMEOUT:g}; 0 = no limit)")
    p.set_defaults(func=_fiji)
    macro = sub.choices.get("macro")  # the embedded `ijtorch macro` verb gets the same watchdog option
    if macro is not None and not any("--timeout" in a.option_strings for a in macro._actions):
        macro.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                           help=f"stop (exit 124) when the macro takes longer (default {DEFAULT_TIMEOUT:g}; 0 = no limit)")

    p = sub.add_parser("install-fiji", help="install ijtorch's shim, Fiji scripts and macros into a Fiji.app")
    p.add_argument("fiji_path", help="the Fiji.app folder")
    p.add_argument("--uninstall", action="store_true", help="remove exactly what the last install wrote")
    p.add_argument("--server", default=None, help="URL of the ijtorch server Fiji should use when started without Python")
    p.set_defaults(func=_install_fiji)
