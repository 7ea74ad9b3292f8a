"""Check a bioimage.io package with the ecosystem's own tools (bioimageio.spec, bioimageio.core)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_package"]


def check_package(source: str | os.PathLike, *, run_test: bool = True) -> tuple[str, str | None, list[str]]:
    """``(format_status, test_status, messages)`` of a package zip or folder (``rdf.yaml``).

    ``format_status`` is bioimageio.spec's ``validation_summary.status`` (``"valid-format"`` when
    the rdf and its files are valid); ``test_status`` is ``bioimageio.core.test_model``'s status
    (``"passed"`` when both weight formats reproduce the test output), ``None`` without
    ``run_test``. Nothing is downloaded (local files and DOIs only).
    """
    from bioimageio.spec import InvalidDescr, load_description

    src = Path(source)
    if src.is_dir():
        src = src / "rdf.yaml"
    descr = load_description(src, perform_io_checks=True)
    msgs = _messages(descr.validation_summary)
    if isinstance(descr, InvalidDescr):
        return "invalid", None, msgs
    fmt = str(descr.validation_summary.status)
    if not run_test:
        return fmt, None, msgs
    from bioimageio.core import test_model

    summary = test_model(src)
    return fmt, str(summary.status), msgs + _messages(summary)


def _messages(summary: object) -> list[str]:
    out = []
    for d in getattr(summary, "details", []) or []:
        for e in getattr(d, "errors", []) or []:
            out.append(f"error: {d.name}: {getattr(e, 'loc', '')} {getattr(e, 'msg', e)}")
    return out
