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
One Java call moves a whole image: numpy memory is handed to Java as direct byte buffers in
native byte order and copied with bulk ``get``/``put`` per plane (``ijtorch.IjtorchArrays``).
C-contiguous input in the target layout is not copied in Python; any other view (F order,
steps, transposes) is first made contiguous with one numpy copy.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
from types import SimpleNamespace
from typing import Any, Iterator

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
#: numpy dtypes with an ImgLib2 pixel type of the same name (see ``IjtorchArrays.dtypeOf``).
IMGLIB2_DTYPES = tuple(np.dtype(d) for d in ("uint8", "int8", "uint16", "int16", "int32", "uint32",
                                             "int64", "uint64", "float32", "float64"))

_FLOAT32_EXACT_INT = 2 ** 24  # every integer of magnitude <= 2**24 is exact in float32
_CHUNK_BYTES = 1 << 30  # direct buffers are int-indexed; 1 GiB chunks (a multiple of 8)
_MAX_PLANE = 2 ** 31 - 1  # Java arrays are int-indexed


@functools.cache
def _java() -> SimpleNamespace:
    """Java classes, looked up once the bridge runs (starting it when needed)."""
    runtime()
    from jpype import JArray, JClass

    byte_buffer = JClass("java.nio.ByteBuffer")
    return SimpleNamespace(
        ImagePlus=JClass("ij.ImagePlus"),
        CompositeImage=JClass("ij.CompositeImage"),
        Arrays=JClass("ijtorch.IjtorchArrays"),
        RAI=JClass("net.imglib2.RandomAccessibleInterval"),
        ArrayImg=JClass("net.imglib2.img.array.ArrayImg"),
        PlanarImg=JClass("net.imglib2.img.planar.PlanarImg"),
        ByteBufferArray=JArray(byte_buffer),
    )


def _buffers(arr: np.ndarray, *, writable: bool) -> Any:
    """Direct ``ByteBuffer[]`` over the bytes of the C-contiguous ``arr``, 1 GiB per chunk.

    The buffers wrap a ctypes view made ``from_address``, which holds no reference to ``arr``:
    JPype keeps a buffer's Python owner alive until Java collects the buffer, and that would
    keep big arrays in memory long after the caller dropped them. The callers here keep ``arr``
    alive for the duration of the one Java call that uses the buffers, and the Java side never
    stores them.
    """
    from jpype.nio import convertToDirectBuffer

    if not arr.flags.c_contiguous:
        raise RuntimeError("internal error: _buffers needs a C-contiguous array")
    base, total = arr.ctypes.data, arr.nbytes
    chunks = []
    for offset in range(0, total, _CHUNK_BYTES):
        size = min(_CHUNK_BYTES, total - offset)
        view = memoryview((ctypes.c_ubyte * size).from_address(base + offset))
        chunks.append(convertToDirectBuffer(view if writable else view.toreadonly()))
    return _java().ByteBufferArray(chunks)


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


# ---------------------------------------------------------------------------- ImagePlus


def _is_java_instance(obj: Any, cls: Any) -> bool:
    try:
        return isinstance(obj, cls)
    except TypeError:
        return False


def imageplus_to_numpy(imp: Any) -> Image:
    """Copy an ImageJ ``ImagePlus`` into an :class:`~ijtorch.image.Image`.

    Parameters
    ----------
    imp
        An ``ij.ImagePlus`` (8-, 16-, 32-bit or RGB; virtual stacks are read plane by plane).

    Returns
    -------
    Image
        ``data`` is a new C-contiguous array laid out in ``axes`` (from ``TZCYX``, axes of length 1
        dropped, ``S`` last for RGB); ``calibration`` carries pixel width/height, voxel depth,
        unit, frame interval and time unit; ``title`` is the image title.

    Raises
    ------
    TypeError
        ``imp`` is not an ImagePlus.
    ValueError
        The image has an unsupported type or inconsistent dimensions.

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
    data = np.empty((n, *plane), dtype=IMAGEJ_DTYPES[bit_depth])
    with _java_errors("ImagePlus -> numpy"):
        j.Arrays.stackToBuffers(stack, _buffers(data, writable=True))
    sizes = {"T": nt, "Z": nz, "C": nc}
    lead = "".join(a for a in "TZC" if sizes[a] > 1)
    data = data.reshape(*(sizes[a] for a in lead), *plane)
    cal = imp.getCalibration()
    calibration = Calibration(
        pixel_width=float(cal.pixelWidth), pixel_height=float(cal.pixelHeight),
        voxel_depth=float(cal.pixelDepth), unit=str(cal.getUnit()),
        frame_interval=float(cal.frameInterval), time_unit=str(cal.getTimeUnit()),
    )
    axes = lead + "YX" + ("S" if rgb else "")
    log.debug("ImagePlus %r -> numpy %s %s %s", str(imp.getTitle()), axes, data.shape, data.dtype)
    return Image(data=data, axes=axes, calibration=calibration, title=str(imp.getTitle()))


def numpy_to_imageplus(data: np.ndarray, axes: str, *, title: str = "",
                       calibration: Calibration | dict | None = None) -> Any:
    """Copy a numpy array into a new ImageJ ``ImagePlus``.

    Parameters
    ----------
    data
        Pixel array; any memory layout (views with steps or transposes are copied once). Dtypes
        follow the module's dtype table; a lossy conversion raises instead of happening.
    axes
        One letter per dimension of ``data`` from ``TZCYX`` (any order, Y and X required), plus
        ``S`` last for RGB (length 3, uint8).
    title
        Image title.
    calibration
        A :class:`~ijtorch.image.Calibration` (or its ``to_dict()``); default: uncalibrated.
        ImageJ normalises the unit ``"um"`` to ``"µm"``.

    Returns
    -------
    ij.ImagePlus
        8-, 16-, 32-bit or RGB, with ``setDimensions(c, z, t)``; a ``CompositeImage`` when there is
        more than one channel, in composite mode up to 8 channels and color mode beyond (as
        ``IJ.createHyperStack`` makes it); opened as a hyperstack when more than one of C, Z, T is
        longer than 1. Not shown.

    Raises
    ------
    ValueError
        Bad ``axes``, more than 5 non-S dimensions, an empty axis, a wrong RGB sample count or a
        dtype that ImageJ cannot hold exactly.
    TypeError
        ``data`` is not a numpy array or ``calibration`` has the wrong type.

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
    if calibration is None:
        calibration = Calibration()
    elif isinstance(calibration, dict):
        calibration = Calibration.from_dict(calibration)
    elif not isinstance(calibration, Calibration):
        raise TypeError(f"calibration must be an ijtorch.image.Calibration, a dict or None, "
                        f"got {type(calibration).__name__}")
    data = _to_imagej_dtype(data, rgb)
    target = CANONICAL_AXES if rgb else CANONICAL_AXES[:-1]
    full = np.ascontiguousarray(to_axes(data, axes, target))  # (T, Z, C, Y, X[, S])
    nt, nz, nc, h, w = full.shape[:5]
    if h * w * (3 if rgb else 1) > _MAX_PLANE:
        raise ValueError(f"data: a {w}x{h} plane exceeds what one ImageJ plane (a Java array) can hold")
    bit_depth = 24 if rgb else {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(full.dtype, 32)
    j = _java()
    with _java_errors("numpy -> ImagePlus"):
        stack = j.Arrays.buffersToStack(_buffers(full, writable=False), w, h, nt * nz * nc, bit_depth)
        imp = j.ImagePlus(str(title), stack)
        imp.setDimensions(nc, nz, nt)
        if sum(n > 1 for n in (nc, nz, nt)) > 1:
            imp.setOpenAsHyperStack(True)
        if nc > 1 and not rgb:  # as IJ.createHyperStack: composite mode up to MAX_CHANNELS, else color
            CI = j.CompositeImage
            imp = CI(imp, CI.COMPOSITE if nc <= CI.MAX_CHANNELS else CI.COLOR)
        cal = imp.getCalibration()
        cal.pixelWidth = float(calibration.pixel_width)
        cal.pixelHeight = float(calibration.pixel_height)
        cal.pixelDepth = float(calibration.voxel_depth)
        cal.setUnit(str(calibration.unit))
        cal.frameInterval = float(calibration.frame_interval)
        cal.setTimeUnit(str(calibration.time_unit))
    log.debug("numpy %s %s %s -> ImagePlus %r (c=%d z=%d t=%d, %d-bit)",
              axes, data.shape, data.dtype, title, nc, nz, nt, bit_depth)
    return imp


# ---------------------------------------------------------------------------- ImgLib2


def imglib2_to_numpy(img: Any) -> np.ndarray:
    """Copy an ImgLib2 ``RandomAccessibleInterval`` into a new numpy array.

    Parameters
    ----------
    img
        An ``ArrayImg`` or ``PlanarImg`` (copied in bulk), or any other
        ``RandomAccessibleInterval`` (views, other images; copied pixel by pixel in Java) of
        unsigned/signed byte, short, int or long, float or double pixels.

    Returns
    -------
    numpy.ndarray
        C-contiguous, shape = ImgLib2 dimensions reversed (``[X, Y, Z]`` -> ``(Z, Y, X)``), dtype
        from the module's dtype table. A view's non-zero minimum is not kept.

    Raises
    ------
    TypeError
        ``img`` is not a RandomAccessibleInterval.
    ValueError
        Unsupported pixel type or an empty dimension.
    """
    j = _java()
    if not _is_java_instance(img, j.RAI):
        raise TypeError(f"img must be an ImgLib2 RandomAccessibleInterval, got {type(img).__name__}")
    dims = [int(img.dimension(d)) for d in range(int(img.numDimensions()))]
    if 0 in dims:
        raise ValueError(f"img: every dimension must be non-empty, got dimensions {dims}")
    with _java_errors("ImgLib2 -> numpy"):
        dtype_name = str(j.Arrays.dtypeOf(img))
    if dtype_name not in {d.name for d in IMGLIB2_DTYPES}:
        raise ValueError(f"img: pixel type {dtype_name} is not supported; accepted: UnsignedByteType, ByteType, "
                         "UnsignedShortType, ShortType, IntType, UnsignedIntType, LongType, UnsignedLongType, "
                         "FloatType, DoubleType")
    data = np.empty(tuple(reversed(dims)), dtype=dtype_name)
    with _java_errors("ImgLib2 -> numpy"):
        buffers = _buffers(data, writable=True)
        done = False
        if _is_java_instance(img, j.ArrayImg):
            done = bool(j.Arrays.arrayImgToBuffers(img, buffers))
        elif _is_java_instance(img, j.PlanarImg):
            done = bool(j.Arrays.planarImgToBuffers(img, buffers))
        if not done:
            log.debug("ImgLib2 %s: no bulk path, copying with a cursor", img.getClass().getName())
            j.Arrays.raiToBuffers(img, buffers)
    return data


def numpy_to_imglib2(data: np.ndarray) -> Any:
    """Copy a numpy array into a new ImgLib2 ``ArrayImg``.

    Parameters
    ----------
    data
        Any memory layout; dtype from the module's dtype table (bool -> UnsignedByteType 0/1,
        float16 -> FloatType).

    Returns
    -------
    net.imglib2.img.array.ArrayImg
        Dimensions = ``data.shape`` reversed (numpy ``(Z, Y, X)`` -> ImgLib2 ``[X, Y, Z]``).

    Raises
    ------
    ValueError
        Unsupported dtype, an empty axis, a 0-d array, or more than 2**31 - 1 pixels (the limit of
        one ArrayImg).
    TypeError
        ``data`` is not a numpy array.
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    if data.ndim == 0 or 0 in data.shape:
        raise ValueError(f"data: need at least one dimension and no empty axis, got shape {data.shape}")
    if data.size > _MAX_PLANE:
        raise ValueError(f"data: {data.size} pixels exceed the {_MAX_PLANE} an ArrayImg can hold")
    data = np.ascontiguousarray(_to_imglib2_dtype(data))
    j = _java()
    from jpype import JArray, JLong

    dims = JArray(JLong)([int(s) for s in reversed(data.shape)])
    with _java_errors("numpy -> ImgLib2"):
        return j.Arrays.buffersToArrayImg(data.dtype.name, dims, _buffers(data, writable=False))
