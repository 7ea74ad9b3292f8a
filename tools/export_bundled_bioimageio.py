"""Reproduce the bioimage.io packages of the bundled models with one command.

    python3 tools/export_bundled_bioimageio.py OUTDIR [--no-test]

Writes ``OUTDIR/<model>.zip`` for every bundled model (``python/ijtorch/models/bundled/*``) with
``ijtorch.bioimageio.export_bioimageio`` (synthetic test input, seed 0), checks each with
bioimageio.spec and bioimageio.core's ``test_model`` and prints the results. The bioimageio cache
goes to a temporary folder, not the home directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", help="folder for the packages")
    ap.add_argument("--no-test", action="store_true", help="format validation only (skip bioimageio.core's test)")
    args = ap.parse_args()
    os.environ.setdefault("BIOIMAGEIO_CACHE_PATH", tempfile.mkdtemp(prefix="bioimageio-cache-"))
    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.models.store import bundled_dir

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for model in sorted(d for d in bundled_dir().iterdir() if (d / "config.json").is_file()):
        try:
            r = export_bioimageio(model, out / f"{model.name}.zip", run_test=not args.no_test)
        except Exception as exc:  # noqa: BLE001 - report every model, then fail
            print(f"{model.name}: FAILED: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{r.path}: {r.model_type}, {r.path.stat().st_size / 1e6:.1f} MB; bioimageio.spec {r.format_status}; "
              f"bioimageio.core test_model {r.test_status or 'not run'} ({r.seconds:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
