"""Atomic output files: write to a temporary file beside the target, then ``os.replace``.

A killed process therefore leaves either the old file or the new one, never half a file, and
readers never see a partial write. Every writer in ijtorch goes through :func:`atomic_path`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "refuse_overwrite"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success move it onto ``path``.

    ``suffix`` (default: ``path``'s own) is kept so that writers choosing a format from the file
    name (tifffile, roifile, PIL) see the right extension.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-", suffix=suffix if suffix is not None else path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def refuse_overwrite(output: str | os.PathLike, inputs: list[str | os.PathLike] | tuple = ()) -> None:
    """Raise ValueError when ``output`` is one of ``inputs`` (inputs are never overwritten)."""
    out = Path(output)
    for given in inputs:
        src = Path(given)
        try:
            same = out.exists() and src.exists() and os.path.samefile(out, src)
        except OSError:
            same = False
        if same or out.resolve() == src.resolve():
            raise ValueError(f"refusing to overwrite the input file {str(src)!r}; choose another output")
