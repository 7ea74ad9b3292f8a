"""Exact, fast pixel conversion between numpy and ImageJ 1.x ``ImagePlus`` / ImgLib2 images.

Axes
----
An ``ImagePlus`` becomes an :class:`ijtorch.image.Image` whose axes are read from the image's own
dimensions (``getNChannels``, ``getNSlices``, ``getNFrames``), never guessed from shapes: letters
in ``TZCYX`` order, axes of length 1 dropped, ``S`` (RGB samples, length 3) last for RGB images.
ImageJ stores planes with C fastest, then Z, then T, so stack plane ``getStackIndex(c, z, t)`` is
``data[t-1, z-1, c-1]`` of a ``TZCYX`` array. ImgLib2 dimensions are numpy's reversed: numpy shape
``(Z, Y, X)`` is ImgLib2 ``[X, Y, Z]``; no axes are attached on that side.

Dtype table
-----------
The ImageJ type depends only on the numpy dtype; values are checked only to refuse a lossy
conversion, and intensities are never rescaled.

=============  =====================================  =================  ====================
numpy dtype    ImageJ (``numpy_to_imageplus``)        ImgLib2 type       back to numpy
=============  =====================================  =================  ====================
bool           8-bit (False 0, True 1)                UnsignedByteType   uint8
uint8          8-bit                                  UnsignedByteType   uint8
uint8 ``..S``  RGB (S = 3 last, axes end in ``S``)    --                 uint8 ``..YXS``
int8           32-bit                                 ByteType           float32 / int8
uint16         16-bit                                 UnsignedShortType  uint16
int16          32-bit                                 ShortType          float32 / int16
int32, uint32  32-bit if all values in [-2**24,       IntType,           float32 / same
int64, uint64  2**24] (exact in float32), else        UnsignedIntType,
               ValueError                             LongType,
                                                      UnsignedLongType
float16        32-bit                                 FloatType          float32
float32        32-bit                                 FloatType          float32
float64        32-bit if every value is exactly a     DoubleType         float32 / float64
               float32 (NaN and +-inf included),
               else ValueError
other          ValueError                             ValueError
=============  =====================================  =================  ====================

ImageJ to numpy: 8-bit (also 8-bit with a colour LUT: the indices) -> uint8, 16-bit -> uint16,
32-bit -> float32, RGB -> uint8 with ``S`` = 3 (R, G, B) last. Raw stored values are returned: a
calibration function (e.g. ImageJ's signed 16-bit offset) is not applied.

Speed
-----
numpy memory is handed to Java as direct NIO buffers in native byte order (typed views such as
``ShortBuffer``), and each plane (each Java array) moves with one bulk ``get``/``put`` call.
C-contiguous input in the target layout is not copied in Python; any other view (F order,
steps, transposes) is first made contiguous with one numpy copy.

Every conversion can write into memory that already exists instead of allocating: ``out=`` takes
a numpy array (ImageJ/ImgLib2 -> numpy) or an ``ImagePlus`` / ``ArrayImg`` / ``PlanarImg``
(numpy -> Java). New memory costs as much as the copy itself (Java zero-fills new arrays, fresh
numpy pages fault in), so reusing a destination (e.g. frame after frame of a live stream) runs at
plain memory-copy speed. ``out`` must match exactly (shape, dtype, dimensions); nothing is resized
or converted on that side, and a mismatch raises before any pixel is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import struct
from types import SimpleNamespace
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import BridgeError
from ..image import CANONICAL_AXES, Calibration, Image, check_axes, to_axes
from ._runtime import runtime

__all__ = [
    "imageplus_to_numpy", "numpy_to_imageplus", "imglib2_to_numpy", "numpy_to_imglib2",
    "IMAGEJ_DTYPES", "IMGLIB2_DTYPES",
]

log = logging.getLogger(__name__)

#: numpy dtypes ImageJ stores natively, keyed by ImageJ bit depth (24 = RGB).
IMAGEJ_DTYPES = {8: np.dtype(np.uint8), 16: np.dtype(np.uint16), 32: np.dtype(np.float32), 24: np.dtype(np.uint8)}
#: ImgLib2 pixel types (classes in ``net.imglib2.type.numeric``) and their numpy dtypes.
_IMGLIB2_TYPES = {f"net.imglib2.type.numeric.{k}": np.dtype(v) for k, v in (
    ("integer.UnsignedByteType", "uint8"), ("integer.ByteType", "int8"), ("integer.UnsignedShortType", "uint16"),
    ("integer.ShortType", "int16"), ("integer.IntType", "int32"), ("integer.UnsignedIntType", "uint32"),
    ("integer.LongType", "int64"), ("integer.UnsignedLongType", "uint64"), ("real.FloatType", "float32"),
    ("real.DoubleType", "float64"))}
#: numpy dtypes with an ImgLib2 pixel type of the same name.
IMGLIB2_DTYPES = tuple(_IMGLIB2_TYPES.values())
#: ``ArrayImgs`` factory of each dtype.
_FACTORIES = dict(zip(IMGLIB2_DTYPES, ("unsignedBytes", "bytes", "unsignedShorts", "shorts", "ints", "unsignedInts",
                                       "longs", "unsignedLongs", "floats", "doubles")))
#: The typed NIO view for a Java primitive array, by its item size and kind (a Java array's dtype).
_VIEWS = {"b": None, "h": "asShortBuffer", "i": "asIntBuffer", "f": "asFloatBuffer", "q": "asLongBuffer",
          "d": "asDoubleBuffer"}

_FLOAT32_EXACT_INT = 2 ** 24  # every integer of magnitude <= 2**24 is exact in float32
_CHUNK_BYTES = 1 << 30  # direct buffers are int-indexed; 1 GiB chunks (a multiple of 8)
_MAX_PLANE = 2 ** 31 - 1  # Java arrays are int-indexed


@functools.cache
def _java() -> SimpleNamespace:
    """Java classes, looked up once the bridge runs (starting it when needed)."""
    runtime()
    from jpype import JClass

    return SimpleNamespace(
        ImagePlus=JClass("ij.ImagePlus"),
        ImageStack=JClass("ij.ImageStack"),
        CompositeImage=JClass("ij.CompositeImage"),
        Arrays=JClass("ijtorch.IjtorchArrays"),
        RAI=JClass("net.imglib2.RandomAccessibleInterval"),
        Img=JClass("net.imglib2.img.Img"),
        Util=JClass("net.imglib2.util.Util"),
        ArrayImg=JClass("net.imglib2.img.array.ArrayImg"),
        ArrayImgs=JClass("net.imglib2.img.array.ArrayImgs"),
        PlanarImg=JClass("net.imglib2.img.planar.PlanarImg"),
        ArrayDataAccess=JClass("net.imglib2.img.basictypeaccess.array.ArrayDataAccess"),
        native=JClass("java.nio.ByteOrder").nativeOrder(),
    )


#: The struct code (b byte, h short, i int, f float, q long, d double) of the Java array holding each dtype.
_KINDS = {np.dtype(d): k for d, k in (("uint8", "b"), ("int8", "b"), ("uint16", "h"), ("int16", "h"), ("int32", "i"),
                                      ("uint32", "i"), ("float32", "f"), ("int64", "q"), ("uint64", "q"),
                                      ("float64", "d"))}
_BITS = {8: "b", 16: "h", 32: "f", 24: "i"}  # ImageJ plane arrays by bit depth (24: RGB as int[])
_JTYPES = {"b": "JByte", "h": "JShort", "i": "JInt", "f": "JFloat", "q": "JLong", "d": "JDouble"}


class _Chunks:
    """Sequential bulk copies between Java primitive arrays and the bytes of the C-contiguous ``arr``.

    The bytes are seen through direct NIO buffers, 1 GiB per chunk (a multiple of 8 bytes, so no item
    straddles two), in native byte order; each Java array moves with one typed ``get`` (numpy -> Java)
    or ``put`` (Java -> numpy) per chunk it touches. The buffers wrap a ctypes view made
    ``from_address``, which holds no reference to ``arr``: JPype keeps a buffer's Python owner alive
    until Java collects the buffer, which would keep big arrays in memory long after the caller dropped
    them; the callers keep ``arr`` alive while they copy, and Java never stores the buffers. One item
    kind per instance.
    """

    def __init__(self, arr: np.ndarray, kind: str, *, writable: bool) -> None:
        from jpype.nio import convertToDirectBuffer

        if not arr.flags.c_contiguous:
            raise RuntimeError("internal error: _Chunks needs a C-contiguous array")
        base, self.total, self.size = arr.ctypes.data, arr.nbytes, struct.calcsize(kind)
        self.views, self.room = [], []  # per chunk: its typed view, and the items it has left
        for offset in range(0, self.total, _CHUNK_BYTES):
            nbytes = min(_CHUNK_BYTES, self.total - offset)
            view = memoryview((ctypes.c_ubyte * nbytes).from_address(base + offset))
            chunk = convertToDirectBuffer(view if writable else view.toreadonly()).order(_java().native)
            self.views.append(chunk if kind == "b" else getattr(chunk, _VIEWS[kind])())
            self.room.append(nbytes // self.size)
        self.index = 0

    def copy(self, jarray: Any, n: int, to_java: bool) -> None:
        """Copy the ``n`` items of ``jarray`` from (``to_java``) or to the next bytes of the numpy array."""
        off = 0
        while n:
            while self.index < len(self.views) and not self.room[self.index]:
                self.index += 1
            if self.index == len(self.views):
                raise ValueError("the numpy buffer is smaller than the image")
            m = min(n, self.room[self.index])
            view = self.views[self.index]
            (view.get if to_java else view.put)(jarray, off, m)
            off, n, self.room[self.index] = off + m, n - m, self.room[self.index] - m

    def finish(self) -> None:
        """Raise unless every byte was copied: sizes must match exactly."""
        left = self.total - self.size * sum(int(v.position()) for v in self.views)
        if left:
            raise ValueError(f"the image has {left} bytes fewer than the numpy buffer")


def _check_size(what: str, needed: int, arr: np.ndarray) -> None:
    """Existing destinations are checked before the first byte is written: no partial copies."""
    if needed != arr.nbytes:
        raise ValueError(f"the {what} needs {needed} bytes but the numpy buffer has {arr.nbytes}")


def _stack_to_numpy(stack: Any, data: np.ndarray) -> None:
    """Every plane of ``stack`` (stack order) into ``data``; RGB planes (int[]) as R, G, B bytes (``..YXS``)."""
    n, plane = int(stack.getSize()), int(stack.getWidth()) * int(stack.getHeight())
    rgb = int(stack.getBitDepth()) == 24
    if rgb:
        packed, out = np.empty(plane, np.int32), data.reshape(n, plane, 3)
    else:
        _check_size("stack", n * plane * data.itemsize, data)
        chunks = _Chunks(data, _KINDS[data.dtype], writable=True)
    for i in range(1, n + 1):
        pixels = stack.getPixels(i)
        if pixels is None:
            raise ValueError(f"stack plane {i} has no pixels")
        if rgb:
            _Chunks(packed, "i", writable=True).copy(pixels, plane, False)
            for s, shift in enumerate((16, 8, 0)):
                np.right_shift(packed, shift, out=out[i - 1, :, s], casting="unsafe")
        else:
            chunks.copy(pixels, plane, False)
    if not rgb:
        chunks.finish()


def _numpy_to_planes(full: np.ndarray, planes: Iterable, bit_depth: int) -> None:
    """Fill the Java plane arrays ``planes`` (stack order) from ``full`` (C order, ``..YX[S]``)."""
    plane = full.shape[-2] * full.shape[-1] if bit_depth != 24 else full.shape[-3] * full.shape[-2]
    if bit_depth == 24:  # interleaved R, G, B bytes -> packed ARGB ints, alpha 0xff
        rgb = full.reshape(-1, plane, 3)
        for i, pixels in enumerate(planes):
            c = rgb[i].astype(np.uint32)
            packed = (0xFF000000 | c[:, 0] << 16 | c[:, 1] << 8 | c[:, 2]).view(np.int32)
            _Chunks(packed, "i", writable=False).copy(pixels, plane, True)
        return
    chunks = _Chunks(full, _BITS[bit_depth], writable=False)
    for pixels in planes:
        chunks.copy(pixels, plane, True)
    chunks.finish()


def _img_arrays(img: Any) -> list | None:
    """The primitive storage arrays of an array-backed ArrayImg (one) or PlanarImg (one per plane), one
    item per pixel; None for anything else (views, cell images, packed BitType)."""
    j = _java()
    if _is_java_instance(img, j.ArrayImg):
        accesses, per = [img.update(None)], int(img.size())
    elif _is_java_instance(img, j.PlanarImg):
        dims = [int(img.dimension(d)) for d in range(min(2, int(img.numDimensions())))]
        accesses, per = [img.getPlane(i) for i in range(int(img.numSlices()))], int(np.prod(dims))
    else:
        return None
    if not all(_is_java_instance(a, j.ArrayDataAccess) for a in accesses):
        return None
    arrays = [a.getCurrentStorageArray() for a in accesses]
    return arrays if all(a is not None and len(a) == per for a in arrays) else None


def _new_array_img(dtype: np.dtype, dims: list[int]) -> Any:
    """A new ArrayImg of ``dtype`` and ImgLib2 ``dims``; the dimensions go as separate arguments, since an
    array would select ``ArrayImgs.longs(long[] data, long... dims)``, which wraps it."""
    return getattr(_java().ArrayImgs, _FACTORIES[dtype])(*dims)


def _imglib2_dtype(img: Any) -> np.dtype | str:
    """The numpy dtype of ``img``'s pixel type, or that type's Java class name when it has none."""
    j = _java()
    t = img.firstElement() if _is_java_instance(img, j.Img) else j.Util.getTypeFromInterval(img)
    name = str(t.getClass().getName())
    return _IMGLIB2_TYPES.get(name, name)


@contextlib.contextmanager
def _java_errors(what: str) -> Iterator[None]:
    """Re-raise Java exceptions as BridgeError, with the Java trace logged at DEBUG."""
    import jpype

    try:
        yield
    except jpype.JException as exc:
        log.debug("Java exception during %s:\n%s", what, exc.stacktrace())
        hint = ""
        if "OutOfMemoryError" in exc.getClass().getName():
            hint = " (the Java heap is too small: set IJTORCH_JAVA_HEAP, e.g. 8g, before the bridge starts)"
        raise BridgeError(f"{what} failed in Java: {exc.getClass().getName()}: {exc.getMessage()}{hint}") from exc


# ---------------------------------------------------------------------------- dtype rules


def _native_order(data: np.ndarray) -> np.ndarray:
    """Byte-swapped (non-native) dtypes are converted to native order (values unchanged)."""
    return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))


def _to_imagej_dtype(data: np.ndarray, rgb: bool) -> np.ndarray:
    """Apply the module's dtype table: return ``data`` in a dtype ImageJ stores, or raise."""
    data = _native_order(data)
    dt = data.dtype
    accepted = "bool, uint8, uint16, float32 (native); int8, int16, float16; int32/uint32/int64/uint64 " \
               "within +-2**24; float64 exactly representable in float32"
    if rgb:
        if dt == np.uint8:
            return data
        if dt == np.bool_:
            return data.astype(np.uint8)
        raise ValueError(f"data: RGB (axes ending in S) needs dtype uint8, got {dt}")
    if dt in (np.uint8, np.uint16, np.float32):
        return data
    if dt == np.bool_:
        return data.astype(np.uint8)
    if dt in (np.int8, np.int16, np.float16):
        return data.astype(np.float32)
    if dt.kind in "iu":
        if data.size:
            lo, hi = int(data.min()), int(data.max())
            if lo < -_FLOAT32_EXACT_INT or hi > _FLOAT32_EXACT_INT:
                raise ValueError(
                    f"data: dtype {dt} with values in [{lo}, {hi}] cannot be stored exactly in ImageJ "
                    f"(32-bit float is exact only within +-2**24 = {_FLOAT32_EXACT_INT}); accepted: {accepted}")
        return data.astype(np.float32)
    if dt == np.float64:
        as32 = data.astype(np.float32)
        if not np.array_equal(as32, data, equal_nan=True):
            raise ValueError(
                f"data: dtype float64 holds values that float32 cannot represent exactly; cast with "
                f".astype(np.float32) if that precision loss is acceptable; accepted: {accepted}")
        return as32
    raise ValueError(f"data: dtype {dt} has no ImageJ equivalent; accepted: {accepted}")


def _to_imglib2_dtype(data: np.ndarray) -> np.ndarray:
    """Apply the module's dtype table for ImgLib2: return ``data`` in a dtype it stores, or raise."""
    data = _native_order(data)
    dt = data.dtype
    if dt in IMGLIB2_DTYPES:
        return data
    if dt == np.bool_:
        return data.astype(np.uint8)
    if dt == np.float16:
        return data.astype(np.float32)
    raise ValueError(f"data: dtype {dt} has no ImgLib2 equivalent; accepted: bool, float16, "
                     f"{', '.join(d.name for d in IMGLIB2_DTYPES)}")


# ---------------------------------------------------------------------------- out= checks


def _dtype_text(dt: np.dtype) -> str:
    return dt.name if dt.isnative else f"{dt.name} in non-native byte order ({dt.str!r})"


def _check_out_array(out: Any, shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
    """Raise unless ``out`` can receive ``shape``/``dtype`` pixels of ``source`` in one bulk copy."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise ValueError(f"out: dtype {_dtype_text(out.dtype)} does not match {source}, which gives "
                         f"{_dtype_text(dtype)}")
    if out.shape != shape:
        raise ValueError(f"out: shape {out.shape} does not match {source}, which gives shape {shape}")
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous (one block of memory in C order) to receive a bulk copy; "
                         f"got a view with strides {out.strides}; use np.empty({shape}, {dtype.name!r})")
    if not out.flags.writeable:
        raise ValueError("out is read-only (flags.writeable is False)")


# ---------------------------------------------------------------------------- ImagePlus


def _is_java_instance(obj: Any, cls: Any) -> bool:
    try:
        return isinstance(obj, cls)
    except TypeError:
        return False


def imageplus_to_numpy(imp: Any, *, out: np.ndarray | None = None) -> Image:
    """Copy an ImageJ ``ImagePlus`` into an :class:`~ijtorch.image.Image`.

    Parameters
    ----------
    imp
        An ``ij.ImagePlus`` (8-, 16-, 32-bit or RGB; virtual stacks are read plane by plane).
    out
        An existing array to copy into instead of a new one: C-contiguous, writable, with exactly
        the shape and dtype the result would have (axes as below, e.g. ``(Z, Y, X)`` uint16 for a
        16-bit z-stack).

    Returns
    -------
    Image
        ``data`` is a new C-contiguous array (or ``out`` itself) laid out in ``axes`` (from
        ``TZCYX``, axes of length 1 dropped, ``S`` last for RGB); ``calibration`` carries pixel
        width/height, voxel depth, unit, frame interval and time unit; ``title`` is the image title.

    Raises
    ------
    TypeError
        ``imp`` is not an ImagePlus, or ``out`` is not a numpy array.
    ValueError
        The image has an unsupported type or inconsistent dimensions; ``out`` has the wrong shape or
        dtype, is not C-contiguous or is read-only.

    Examples
    --------
    >>> img = imageplus_to_numpy(IJ.createImage("a", "16-bit ramp", 64, 32, 5))  # doctest: +SKIP
    >>> img.axes, img.data.shape, img.data.dtype  # doctest: +SKIP
    ('ZYX', (5, 32, 64), dtype('uint16'))
    """
    j = _java()
    if not _is_java_instance(imp, j.ImagePlus):
        raise TypeError(f"imp must be an ij.ImagePlus, got {type(imp).__name__}")
    bit_depth = int(imp.getBitDepth())
    if bit_depth not in IMAGEJ_DTYPES:
        raise ValueError(f"imp {imp.getTitle()!s}: unsupported bit depth {bit_depth}; accepted: 8, 16, 24 (RGB), 32")
    nc, nz, nt = int(imp.getNChannels()), int(imp.getNSlices()), int(imp.getNFrames())
    stack = imp.getStack()
    if int(stack.getBitDepth()) != bit_depth:
        raise ValueError(f"imp {imp.getTitle()!s}: the image is {bit_depth}-bit but its stack is "
                         f"{int(stack.getBitDepth())}-bit")
    n = int(stack.getSize())
    if nc * nz * nt != n:
        raise ValueError(f"imp {imp.getTitle()!s}: channels*slices*frames = {nc}*{nz}*{nt} does not match "
                         f"the stack size {n}")
    h, w = int(imp.getHeight()), int(imp.getWidth())
    rgb = bit_depth == 24
    plane = (h, w, 3) if rgb else (h, w)
    sizes = {"T": nt, "Z": nz, "C": nc}
    lead = "".join(a for a in "TZC" if sizes[a] > 1)
    axes = lead + "YX" + ("S" if rgb else "")
    shape = (*(sizes[a] for a in lead), *plane)
    if out is None:
        data = np.empty(shape, dtype=IMAGEJ_DTYPES[bit_depth])
    else:
        _check_out_array(out, shape, IMAGEJ_DTYPES[bit_depth],
                         f"imp {imp.getTitle()!s} ({bit_depth}-bit, axes {axes!r})")
        data = out
    with _java_errors("ImagePlus -> numpy"):
        _stack_to_numpy(stack, data)
    cal = imp.getCalibration()
    calibration = Calibration(
        pixel_width=float(cal.pixelWidth), pixel_height=float(cal.pixelHeight),
        voxel_depth=float(cal.pixelDepth), unit=str(cal.getUnit()),
        frame_interval=float(cal.frameInterval), time_unit=str(cal.getTimeUnit()),
    )
    log.debug("ImagePlus %r -> numpy %s %s %s", str(imp.getTitle()), axes, data.shape, data.dtype)
    return Image(data=data, axes=axes, calibration=calibration, title=str(imp.getTitle()))


def numpy_to_imageplus(data: np.ndarray, axes: str, *, title: str | None = None,
                       calibration: Calibration | dict | None = None, out: Any = None) -> Any:
    """Copy a numpy array into a new ImageJ ``ImagePlus`` (or into the pixels of ``out``).

    Parameters
    ----------
    data
        Pixel array; any memory layout (views with steps or transposes are copied once). Dtypes
        follow the module's dtype table; a lossy conversion raises instead of happening.
    axes
        One letter per dimension of ``data`` from ``TZCYX`` (any order, Y and X required), plus
        ``S`` last for RGB (length 3, uint8).
    title
        Image title; default ``""`` (with ``out``: out's title is kept unless given).
    calibration
        A :class:`~ijtorch.image.Calibration` (or its ``to_dict()``); default: uncalibrated (with
        ``out``: out's calibration is kept unless given). ImageJ normalises the unit ``"um"`` to
        ``"µm"``.
    out
        An existing, non-virtual ``ImagePlus`` whose pixel arrays are overwritten instead of
        allocating new ones. Its bit depth must be the one ``data``'s dtype maps to (see the
        dtype table) and its channels, slices, frames, height and width those of ``data``
        (``axes`` missing from ``data`` count as length 1). Its type, LUTs and display range are
        kept; ``updateAndDraw()`` refreshes it if shown.

    Returns
    -------
    ij.ImagePlus
        ``out``, or a new one: 8-, 16-, 32-bit or RGB, with ``setDimensions(c, z, t)``; a
        ``CompositeImage`` when there is more than one channel, in composite mode up to 8 channels
        and color mode beyond (as ``IJ.createHyperStack`` makes it); opened as a hyperstack when
        more than one of C, Z, T is longer than 1. Not shown.

    Raises
    ------
    ValueError
        Bad ``axes``, more than 5 non-S dimensions, an empty axis, a wrong RGB sample count or a
        dtype that ImageJ cannot hold exactly; ``out`` is virtual or differs in bit depth or
        dimensions.
    TypeError
        ``data`` is not a numpy array, ``out`` is not an ImagePlus or ``calibration`` has the wrong
        type.

    Examples
    --------
    >>> imp = numpy_to_imageplus(np.zeros((3, 64, 64), np.uint16), "CYX", title="c")  # doctest: +SKIP
    >>> imp.getNChannels(), imp.getBitDepth()  # doctest: +SKIP
    (3, 16)
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'YX' or 'TZCYX', got {type(axes).__name__}")
    rgb = axes.upper().endswith("S")
    if data.ndim - rgb > 5:
        raise ValueError(f"data has {data.ndim} dimensions (axes={axes!r}); ImageJ holds at most 5 "
                         f"(letters from TZCYX) plus S for RGB")
    axes = check_axes(axes, data.ndim)
    if 0 in data.shape:
        raise ValueError(f"data: every axis must be non-empty, got shape {data.shape} for axes {axes!r}")
    if rgb and data.shape[-1] != 3:
        raise ValueError(f"data: the S axis (RGB samples) must have length 3, got {data.shape[-1]}")
    if isinstance(calibration, dict):
        calibration = Calibration.from_dict(calibration)
    elif calibration is not None and not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be an ijtorch.image.Calibration, a dict or None, "
                        f"got {type(calibration).__name__}")
    j = _java()
    if out is not None and not _is_java_instance(out, j.ImagePlus):
        raise TypeError(f"out must be an ij.ImagePlus, got {type(out).__name__}")
    given_dtype = data.dtype
    data = _to_imagej_dtype(data, rgb)
    target = CANONICAL_AXES if rgb else CANONICAL_AXES[:-1]
    full = np.ascontiguousarray(to_axes(data, axes, target))  # (T, Z, C, Y, X[, S])
    nt, nz, nc, h, w = full.shape[:5]
    if h * w * (3 if rgb else 1) > _MAX_PLANE:
        raise ValueError(f"data: a {w}x{h} plane exceeds what one ImageJ plane (a Java array) can hold")
    bit_depth = 24 if rgb else {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(full.dtype, 32)
    if out is not None:
        _copy_into_imageplus(full, out, bit_depth, f"data ({_dtype_text(given_dtype)}, axes {axes!r}, "
                                                    f"shape {tuple(data.shape)})")
        imp = out
    else:
        with _java_errors("numpy -> ImagePlus"):
            stack = _new_stack(full, w, h, nt * nz * nc, bit_depth)
            imp = j.ImagePlus("" if title is None else str(title), stack)
            imp.setDimensions(nc, nz, nt)
            if sum(n > 1 for n in (nc, nz, nt)) > 1:
                imp.setOpenAsHyperStack(True)
            if nc > 1 and not rgb:  # as IJ.createHyperStack: composite mode up to MAX_CHANNELS, else color
                CI = j.CompositeImage
                imp = CI(imp, CI.COMPOSITE if nc <= CI.MAX_CHANNELS else CI.COLOR)
        if calibration is None:
            calibration = Calibration()
    with _java_errors("numpy -> ImagePlus"):
        if out is not None and title is not None:
            imp.setTitle(str(title))
        if calibration is not None:
            cal = imp.getCalibration()
            cal.pixelWidth = float(calibration.pixel_width)
            cal.pixelHeight = float(calibration.pixel_height)
            cal.pixelDepth = float(calibration.voxel_depth)
            cal.setUnit(str(calibration.unit))
            cal.frameInterval = float(calibration.frame_interval)
            cal.setTimeUnit(str(calibration.time_unit))
    log.debug("numpy %s %s %s -> %s ImagePlus %r (c=%d z=%d t=%d, %d-bit)", axes, data.shape, data.dtype,
              "existing" if out is not None else "new", str(imp.getTitle()), nc, nz, nt, bit_depth)
    return imp


def _new_stack(full: np.ndarray, w: int, h: int, n: int, bit_depth: int) -> Any:
    """A new stack of ``n`` planes filled from ``full``; each plane is allocated right before it is
    filled, so it is still in cache."""
    import jpype

    jtype, stack = jpype.JArray(getattr(jpype, _JTYPES[_BITS[bit_depth]])), _java().ImageStack(w, h)

    def planes() -> Iterator[Any]:
        for _ in range(n):
            pixels = jtype(w * h)
            stack.addSlice("", pixels)
            yield pixels

    _numpy_to_planes(full, planes(), bit_depth)
    return stack


def _planes(stack: Any, bit_depth: int, full: np.ndarray) -> list:
    """The plane arrays of ``stack``, after checking that each is a ``bit_depth`` plane and that ``full``
    covers them exactly: nothing is written unless everything fits."""
    import jpype

    jtype, plane = jpype.JArray(getattr(jpype, _JTYPES[_BITS[bit_depth]])), int(stack.getWidth() * stack.getHeight())
    planes = [stack.getPixels(i) for i in range(1, int(stack.getSize()) + 1)]
    for i, pixels in enumerate(planes, start=1):
        if not isinstance(pixels, jtype) or len(pixels) != plane:
            got = "no pixels" if pixels is None else f"{pixels.getClass().getSimpleName()} of {len(pixels)}"
            raise ValueError(f"stack plane {i} is not a {bit_depth}-bit plane of {plane} pixels ({got})")
    _check_size("stack", len(planes) * plane * (3 if bit_depth == 24 else bit_depth // 8), full)
    return planes


def _copy_into_imageplus(full: np.ndarray, out: Any, bit_depth: int, source: str) -> None:
    """Overwrite the pixel arrays of ``out`` with ``full`` (C-contiguous TZCYX[S]), after checking
    that they match exactly."""
    name = f"out {out.getTitle()!s}"
    out_bits = int(out.getBitDepth())
    if out_bits != bit_depth:
        kinds = {8: "8-bit", 16: "16-bit", 24: "RGB", 32: "32-bit"}
        raise ValueError(f"{name} is {kinds.get(out_bits, f'{out_bits}-bit')} but {source} is stored as "
                         f"{kinds[bit_depth]}; convert the array first (the dtype table maps uint8 to 8-bit, "
                         f"uint16 to 16-bit, float32 and wider types to 32-bit, uint8 ..S to RGB)")
    stack = out.getStack()
    if bool(stack.isVirtual()):
        raise ValueError(f"{name} is a virtual stack (its planes are read on demand), which has no pixel arrays "
                         f"to copy into; duplicate it or convert without out")
    nc, nz, nt = int(out.getNChannels()), int(out.getNSlices()), int(out.getNFrames())
    h, w = int(out.getHeight()), int(out.getWidth())
    if (nt, nz, nc, h, w) != full.shape[:5]:
        got = dict(zip("TZCYX", full.shape[:5]))
        raise ValueError(f"{name} has channels={nc} slices={nz} frames={nt} height={h} width={w} but {source} "
                         f"has channels={got['C']} slices={got['Z']} frames={got['T']} height={got['Y']} "
                         f"width={got['X']}")
    if int(stack.getSize()) != nc * nz * nt:
        raise ValueError(f"{name}: channels*slices*frames = {nc}*{nz}*{nt} does not match the stack size "
                         f"{int(stack.getSize())}")
    with _java_errors("numpy -> existing ImagePlus"):
        _numpy_to_planes(full, _planes(stack, bit_depth, full), bit_depth)
        out.updateAndDraw()  # ImageJ's "pixels changed" call: refreshes the shown image, if any


# ---------------------------------------------------------------------------- ImgLib2


def imglib2_to_numpy(img: Any, *, out: np.ndarray | None = None) -> np.ndarray:
    """Copy an ImgLib2 ``RandomAccessibleInterval`` into a new numpy array (or into ``out``).

    Parameters
    ----------
    img
        An ``ArrayImg`` or ``PlanarImg`` (copied in bulk), or any other
        ``RandomAccessibleInterval`` (views, other images; copied pixel by pixel in Java) of
        unsigned/signed byte, short, int or long, float or double pixels.
    out
        An existing array to copy into instead of a new one: C-contiguous, writable, with exactly
        the shape and dtype of the result.

    Returns
    -------
    numpy.ndarray
        ``out``, or a new C-contiguous array; shape = ImgLib2 dimensions reversed (``[X, Y, Z]``
        -> ``(Z, Y, X)``), dtype from the module's dtype table. A view's non-zero minimum is not
        kept.

    Raises
    ------
    TypeError
        ``img`` is not a RandomAccessibleInterval, or ``out`` is not a numpy array.
    ValueError
        Unsupported pixel type or an empty dimension; ``out`` has the wrong shape or dtype, is not
        C-contiguous or is read-only.
    """
    j = _java()
    if not _is_java_instance(img, j.RAI):
        raise TypeError(f"img must be an ImgLib2 RandomAccessibleInterval, got {type(img).__name__}")
    dims = [int(img.dimension(d)) for d in range(int(img.numDimensions()))]
    if 0 in dims:
        raise ValueError(f"img: every dimension must be non-empty, got dimensions {dims}")
    with _java_errors("ImgLib2 -> numpy"):
        dtype = _imglib2_dtype(img)
    if not isinstance(dtype, np.dtype):
        raise ValueError(f"img: pixel type {dtype} is not supported; accepted: UnsignedByteType, ByteType, "
                         "UnsignedShortType, ShortType, IntType, UnsignedIntType, LongType, UnsignedLongType, "
                         "FloatType, DoubleType")
    shape = tuple(reversed(dims))
    if out is None:
        data = np.empty(shape, dtype=dtype)
    else:
        _check_out_array(out, shape, dtype, f"img (ImgLib2 dimensions {dims})")
        data = out
    with _java_errors("ImgLib2 -> numpy"):
        arrays = _img_arrays(img)
        if arrays is None:  # a view: copied pixel by pixel (in Java) into an ArrayImg first
            log.debug("ImgLib2 %s: no bulk path, copying with a cursor", img.getClass().getName())
            copy = _new_array_img(dtype, dims)
            j.Arrays.copy(img, copy)
            arrays = _img_arrays(copy)
        chunks = _Chunks(data, _KINDS[dtype], writable=True)
        for a in arrays:
            chunks.copy(a, len(a), False)
        chunks.finish()
    return data


def numpy_to_imglib2(data: np.ndarray, *, out: Any = None) -> Any:
    """Copy a numpy array into a new ImgLib2 ``ArrayImg`` (or into the storage of ``out``).

    Parameters
    ----------
    data
        Any memory layout; dtype from the module's dtype table (bool -> UnsignedByteType 0/1,
        float16 -> FloatType).
    out
        An existing array-backed ``ArrayImg`` or ``PlanarImg`` whose storage arrays are
        overwritten instead of allocating a new image; its pixel type must be the one ``data``'s
        dtype maps to and its dimensions ``data.shape`` reversed.

    Returns
    -------
    net.imglib2.img.array.ArrayImg
        ``out``, or a new ArrayImg; dimensions = ``data.shape`` reversed (numpy ``(Z, Y, X)`` ->
        ImgLib2 ``[X, Y, Z]``).

    Raises
    ------
    ValueError
        Unsupported dtype, an empty axis, a 0-d array, or more than 2**31 - 1 pixels for a new
        image (the limit of one ArrayImg); ``out`` of another pixel type or dimensions, or not
        array-backed.
    TypeError
        ``data`` is not a numpy array, or ``out`` is not an ImgLib2 image.
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    if data.ndim == 0 or 0 in data.shape:
        raise ValueError(f"data: need at least one dimension and no empty axis, got shape {data.shape}")
    if out is None and data.size > _MAX_PLANE:
        raise ValueError(f"data: {data.size} pixels exceed the {_MAX_PLANE} an ArrayImg can hold")
    given_dtype = data.dtype
    data = np.ascontiguousarray(_to_imglib2_dtype(data))
    if out is not None:
        _copy_into_imglib2(data, out, f"data ({_dtype_text(given_dtype)}, shape {tuple(data.shape)})")
        return out
    with _java_errors("numpy -> ImgLib2"):
        img = _new_array_img(data.dtype, [int(s) for s in reversed(data.shape)])
        (storage,) = _img_arrays(img)
        chunks = _Chunks(data, _KINDS[data.dtype], writable=False)
        chunks.copy(storage, len(storage), True)
        chunks.finish()
    return img


def _copy_into_imglib2(data: np.ndarray, out: Any, source: str) -> None:
    """Overwrite the storage of the ArrayImg/PlanarImg ``out`` with the C-contiguous ``data``,
    after checking that they match exactly."""
    j = _java()
    if not _is_java_instance(out, j.RAI):
        raise TypeError(f"out must be an ImgLib2 ArrayImg or PlanarImg, got {type(out).__name__}")
    if not (_is_java_instance(out, j.ArrayImg) or _is_java_instance(out, j.PlanarImg)):
        raise ValueError(f"out must be an ArrayImg or PlanarImg (their storage arrays are written directly), "
                         f"got {out.getClass().getName()}")
    dims = [int(out.dimension(d)) for d in range(int(out.numDimensions()))]
    with _java_errors("numpy -> existing ImgLib2 image"):
        out_dtype = _imglib2_dtype(out)
    if not isinstance(out_dtype, np.dtype) or out_dtype != data.dtype:
        raise ValueError(f"out holds {out.firstElement().getClass().getSimpleName()} pixels (numpy "
                         f"{getattr(out_dtype, 'name', out_dtype)}) but "
                         f"{source} is stored as {data.dtype.name}; convert the array first")
    if tuple(reversed(dims)) != data.shape:
        raise ValueError(f"out has ImgLib2 dimensions {dims} (numpy shape {tuple(reversed(dims))}) but {source} "
                         f"needs {list(reversed(data.shape))}")
    with _java_errors("numpy -> existing ImgLib2 image"):
        arrays = _img_arrays(out)
    if arrays is not None:
        _check_size("image", sum(len(a) for a in arrays) * data.itemsize, data)
        with _java_errors("numpy -> existing ImgLib2 image"):
            chunks = _Chunks(data, _KINDS[data.dtype], writable=False)
            for a in arrays:
                chunks.copy(a, len(a), True)
            chunks.finish()
    else:
        raise ValueError(f"out ({out.getClass().getName()}) is not backed by primitive arrays with one element "
                         f"per pixel, so it cannot be written in bulk")
