"""Sample nuclei images shipped inside the package (real microscopy with human ground truth).

Six grayscale fluorescence images of cell nuclei with their uint16 label maps (0 background,
objects 1..N), from the 2018 Data Science Bowl stage-1 training set (BBBC038, CC0; see
``README.md`` next to this file). All six are in the bundled ``nuclei`` model's held-out
validation split, so what the model scores on them is an honest figure. ``make demo`` and
``ijtorch demo`` segment them by default; tests that need a few real nuclei use them, so they run
without ``../shared/data``.

>>> from ijtorch import samples
>>> samples.path()                      # folder with images/ and labels/   # doctest: +SKIP
>>> image, labels = samples.load(samples.names()[0])                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path", "names", "sample_images", "sample_labels", "load"]

_ROOT = Path(__file__).resolve().parent / "nuclei"


def path() -> Path:
    """The sample folder: ``images/NAME.tif`` and ``labels/NAME.tif`` share names (the layout of
    ``../shared/data/nuclei_dsb2018/train``, so anything that reads that folder reads this one)."""
    return _ROOT


def names() -> list[str]:
    """The sample names (file stems), sorted."""
    return sorted(p.stem for p in (_ROOT / "images").glob("*.tif"))


def sample_images() -> list[Path]:
    """Paths of the sample images (8-bit grayscale TIFF), sorted by name."""
    return [_ROOT / "images" / f"{n}.tif" for n in names()]


def sample_labels() -> list[Path]:
    """Paths of the ground-truth label maps (uint16 TIFF), in the order of :func:`sample_images`."""
    return [_ROOT / "labels" / f"{n}.tif" for n in names()]


def load(name: str):
    """``(image, labels)`` of one sample as numpy arrays (``(Y, X)`` uint8 and uint16)."""
    from ..io.tiff import read_tiff

    stem = Path(name).stem
    if stem not in names():
        raise KeyError(f"no sample {name!r}; the samples are {', '.join(names())}")
    return read_tiff(_ROOT / "images" / f"{stem}.tif").data, read_tiff(_ROOT / "labels" / f"{stem}.tif").data
