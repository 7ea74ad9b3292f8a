"""Reproduce the bioimage.io packages of the bundled models with one command.

    python3 tools/export_bundled_bioimageio.py OUTDIR [--model NAME ...] [--no-test]

Writes ``OUTDIR/<model>.zip`` for every bundled model (every folder of
``python/ijtorch/models/bundled/`` with a ``config.json``; ``--model`` picks some) with
``ijtorch.bioimageio.export_bioimageio`` (synthetic test input, seed 0), checks each with
bioimageio.spec and bioimageio.core's ``test_model`` and prints one line per package with its
SHA-256. The packages are byte-for-byte reproducible: the same ijtorch, torch and bioimageio.spec
versions give the same SHA-256 every run: the zip entries have fixed times, and each model is
exported in a fresh Python process (TorchScript numbers the classes it traces within one process,
so a model traced after another would get different TorchScript bytes). The bioimageio cache goes
to a temporary folder, not the home directory. Exit status 1 when any model failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", help="folder for the packages")
    ap.add_argument("--model", action="append", default=[], metavar="NAME",
                    help="export only this bundled model (repeatable; default: every bundled model)")
    ap.add_argument("--no-test", action="store_true", help="format validation only (skip bioimageio.core's test)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: export this one model in this process
    args = ap.parse_args()
    out = Path(args.outdir)
    if args.one:
        return _export_one(args.one, out, run_test=not args.no_test)
    from ijtorch.models.store import bundled_dir

    models = sorted(d.name for d in bundled_dir().iterdir() if (d / "config.json").is_file())
    unknown = sorted(set(args.model) - set(models))
    if unknown:
        print(f"error: no bundled model {', '.join(unknown)}; bundled: {', '.join(models)}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="bioimageio-cache-")
    env = dict(os.environ, BIOIMAGEIO_CACHE_PATH=os.environ.get("BIOIMAGEIO_CACHE_PATH", cache))
    failed = 0
    try:
        for name in models:
            if args.model and name not in args.model:
                continue
            cmd = [sys.executable, __file__, str(out), "--one", name] + (["--no-test"] if args.no_test else [])
            failed += subprocess.run(cmd, env=env, check=False).returncode != 0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 1 if failed else 0


def _export_one(name: str, out: Path, *, run_test: bool) -> int:
    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.models.store import bundled_dir

    try:
        r = export_bioimageio(bundled_dir() / name, out / f"{name}.zip", run_test=run_test)
    except Exception as exc:  # noqa: BLE001 - one line per failed model; the parent reports the status
        print(f"{name}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{r.path}: {r.model_type}, {r.path.stat().st_size / 1e6:.1f} MB, sha256 {_sha256(r.path)}; "
          f"bioimageio.spec {r.format_status}; bioimageio.core test_model {r.test_status or 'not run'} "
          f"({r.seconds:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
