"""Round trips numpy <-> ImagePlus / ImgLib2, checked pixel by pixel and against ImageJ's own reads."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from ijtorch.image import Calibration, to_axes

pytestmark = pytest.mark.jvm


@pytest.fixture(scope="module")
def conv(ij):
    from ijtorch.bridge import _convert

    return _convert


@pytest.fixture(scope="module")
def J(ij):
    from types import SimpleNamespace

    from jpype import JClass

    return SimpleNamespace(
        IJ=JClass("ij.IJ"),
        ArrayImgs=JClass("net.imglib2.img.array.ArrayImgs"),
        PlanarImgs=JClass("net.imglib2.img.planar.PlanarImgs"),
        Views=JClass("net.imglib2.view.Views"),
    )


def _random(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.normal(0, 1000, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    """Same shape, dtype and bits (so NaN payloads and -0.0 count)."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    assert a.tobytes() == b.tobytes()


# ------------------------------------------------------------------------------ ImagePlus round trips

LAYOUTS = [("YX", (5, 7)), ("ZYX", (4, 5, 7)), ("CYX", (3, 5, 7)), ("TYX", (2, 5, 7)),
           ("ZCYX", (4, 2, 5, 7)), ("TZYX", (2, 3, 5, 7)), ("TZCYX", (2, 3, 4, 5, 7))]


@pytest.mark.parametrize("dtype,bits", [(np.uint8, 8), (np.uint16, 16), (np.float32, 32)])
@pytest.mark.parametrize("axes,shape", LAYOUTS, ids=[a for a, _ in LAYOUTS])
def test_round_trip_gray(conv, rng, dtype, bits, axes, shape):
    data = _random(rng, shape, dtype)
    imp = conv.numpy_to_imageplus(data, axes, title="rt")
    sizes = dict(zip(axes, shape))
    assert imp.getBitDepth() == bits
    assert (imp.getNChannels(), imp.getNSlices(), imp.getNFrames()) == tuple(sizes.get(a, 1) for a in "CZT")
    assert (imp.getWidth(), imp.getHeight()) == (sizes["X"], sizes["Y"])
    img = conv.imageplus_to_numpy(imp)
    assert img.axes == axes and img.title == "rt"
    _same(img.data, data)


@pytest.mark.parametrize("axes,shape", [("YXS", (5, 7, 3)), ("ZYXS", (3, 5, 7, 3)), ("TZYXS", (2, 3, 4, 6, 3))])
def test_round_trip_rgb(conv, rng, axes, shape):
    data = _random(rng, shape, np.uint8)
    imp = conv.numpy_to_imageplus(data, axes)
    assert imp.getType() == imp.COLOR_RGB
    img = conv.imageplus_to_numpy(imp)
    assert img.axes == axes
    _same(img.data, data)
    # ImageJ's own packed value at one pixel: 0xRRGGBB
    ip = imp.getStack().getProcessor(imp.getStackSize())
    y, x = shape[-3] - 1, 2
    rgb = int(ip.getPixel(x, y)) & 0xFFFFFF
    expected = data.reshape(-1, *shape[-3:])[-1, y, x]
    assert (rgb >> 16, (rgb >> 8) & 255, rgb & 255) == tuple(int(v) for v in expected)


def test_plane_order_matches_getStackIndex(conv, rng):
    t, z, c = 2, 3, 4
    data = _random(rng, (t, z, c, 6, 5), np.uint16)
    imp = conv.numpy_to_imageplus(data, "TZCYX")
    assert imp.isHyperStack()
    stack = imp.getStack()
    for ti in range(t):
        for zi in range(z):
            for ci in range(c):
                index = imp.getStackIndex(ci + 1, zi + 1, ti + 1)
                plane = np.asarray(stack.getPixels(index)).view(np.uint16).reshape(6, 5)
                np.testing.assert_array_equal(plane, data[ti, zi, ci])


@pytest.mark.parametrize("channels", [1, 3, 9])
def test_channels_like_imagej(conv, J, channels):
    """Several channels give a CompositeImage in the mode IJ.createHyperStack picks for that count."""
    imp = conv.numpy_to_imageplus(np.zeros((channels, 2, 4, 4), np.uint16), "CZYX")
    ref = J.IJ.createHyperStack("ref", 4, 4, channels, 2, 1, 16)
    assert imp.getClass().getName() == ref.getClass().getName()
    assert imp.isComposite() == ref.isComposite()
    if channels > 1:
        assert imp.getMode() == ref.getMode()
    assert imp.isHyperStack() == ref.isHyperStack()


@pytest.mark.parametrize("order", ["C", "F"])
def test_memory_layouts(conv, rng, order):
    data = np.asarray(_random(rng, (2, 3, 5, 7), np.float32), order=order)
    img = conv.imageplus_to_numpy(conv.numpy_to_imageplus(data, "TZYX"))
    _same(img.data, np.ascontiguousarray(data))


def test_non_contiguous_views(conv, rng):
    base = _random(rng, (6, 9, 11), np.uint16)
    stepped = base[::2, 1::3, ::-1]
    _same(conv.imageplus_to_numpy(conv.numpy_to_imageplus(stepped, "ZYX")).data, np.ascontiguousarray(stepped))
    transposed = base.transpose(2, 0, 1)  # axes X, Z, Y
    img = conv.imageplus_to_numpy(conv.numpy_to_imageplus(transposed, "XZY"))
    assert img.axes == "ZYX"
    _same(img.data, base)
    # a permuted hyperstack: C first, T last
    hs = _random(rng, (3, 2, 5, 7, 4), np.float32)  # C Z Y X T
    img = conv.imageplus_to_numpy(conv.numpy_to_imageplus(hs, "CZYXT"))
    assert img.axes == "TZCYX"
    _same(img.data, np.ascontiguousarray(to_axes(hs, "CZYXT", "TZCYX")))
    rgb = _random(rng, (8, 7, 3), np.uint8)[::2, ::-1]
    _same(conv.imageplus_to_numpy(conv.numpy_to_imageplus(rgb, "YXS")).data, np.ascontiguousarray(rgb))


def test_edge_values(conv):
    u8 = np.array([[0, 1, 254, 255]], np.uint8)
    u16 = np.array([[0, 1, 32767, 32768, 65534, 65535]], np.uint16)
    f32 = np.array([[0.0, -0.0, -1.5, -3.4e38, 3.4e38, 1e-45, np.nan, np.inf, -np.inf]], np.float32)
    for data in (u8, u16, f32):
        _same(conv.imageplus_to_numpy(conv.numpy_to_imageplus(data, "YX")).data, data)
    imp = conv.numpy_to_imageplus(f32, "YX")
    ip = imp.getProcessor()
    assert ip.getPixelValue(2, 0) == -1.5 and np.isnan(ip.getPixelValue(6, 0))
    assert ip.getPixelValue(7, 0) == np.inf and ip.getPixelValue(8, 0) == -np.inf
    assert conv.numpy_to_imageplus(u16, "YX").getProcessor().getPixel(5, 0) == 65535


def test_calibration_and_title_round_trip(conv, rng):
    cal = Calibration(pixel_width=0.25, pixel_height=0.5, voxel_depth=1.5, unit="µm",
                      frame_interval=2.0, time_unit="min")
    imp = conv.numpy_to_imageplus(_random(rng, (2, 3, 4, 5), np.uint8), "TZYX", title="calibrated", calibration=cal)
    jcal = imp.getCalibration()
    assert (jcal.pixelWidth, jcal.pixelHeight, jcal.pixelDepth, jcal.frameInterval) == (0.25, 0.5, 1.5, 2.0)
    img = conv.imageplus_to_numpy(imp)
    assert img.calibration == cal and img.title == "calibrated"
    # dict form, and ImageJ's own unit normalisation (um -> µm)
    imp = conv.numpy_to_imageplus(np.zeros((3, 3), np.uint8), "YX", calibration={"unit": "um", "pixel_width": 0.1})
    got = conv.imageplus_to_numpy(imp).calibration
    assert got.unit == "µm" and got.pixel_width == 0.1 and got.pixel_height == 1.0
    assert conv.imageplus_to_numpy(conv.numpy_to_imageplus(np.zeros((3, 3), np.uint8), "YX")).calibration == Calibration()


@pytest.mark.parametrize("bits,kind", [(8, "8-bit"), (16, "16-bit"), (32, "32-bit"), (24, "RGB")])
def test_imagej_created_hyperstack(conv, J, rng, bits, kind):
    w, h, c, z, t = 7, 5, 2, 3, 2
    imp = J.IJ.createImage("made by ImageJ", f"{kind} ramp", w, h, c, z, t)
    stack = imp.getStack()
    for i in range(1, stack.getSize() + 1):  # perturb values through ImageJ's own API
        ip = stack.getProcessor(i)
        for _ in range(6):
            x, y = int(rng.integers(w)), int(rng.integers(h))
            if bits == 32:
                ip.putPixelValue(x, y, float(rng.normal(0, 100)))
            elif bits == 24:
                ip.putPixel(x, y, int(rng.integers(0, 2 ** 24)))
            else:
                ip.putPixel(x, y, int(rng.integers(0, 2 ** bits)))
    img = conv.imageplus_to_numpy(imp)
    assert img.axes == ("TZCYXS" if bits == 24 else "TZCYX") and img.title == "made by ImageJ"
    assert img.data.shape[:5] == (t, z, c, h, w)
    for ti in range(t):
        for zi in range(z):
            for ci in range(c):
                ip = stack.getProcessor(imp.getStackIndex(ci + 1, zi + 1, ti + 1))
                for y in range(h):
                    for x in range(w):
                        got = img.data[ti, zi, ci, y, x]
                        if bits == 32:
                            assert got == np.float32(ip.getPixelValue(x, y))
                        elif bits == 24:
                            v = int(ip.getPixel(x, y))
                            assert tuple(int(g) for g in got) == ((v >> 16) & 255, (v >> 8) & 255, v & 255)
                        else:
                            assert got == ip.getPixel(x, y)


def test_imagej_created_plain_images(conv, J):
    plane = conv.imageplus_to_numpy(J.IJ.createImage("p", "8-bit ramp", 16, 4, 1))
    assert plane.axes == "YX" and plane.data.dtype == np.uint8
    assert plane.data[0, 15] == J.IJ.createImage("p", "8-bit ramp", 16, 4, 1).getProcessor().getPixel(15, 0)
    stack = conv.imageplus_to_numpy(J.IJ.createImage("s", "16-bit ramp", 8, 4, 5))
    assert stack.axes == "ZYX" and stack.data.shape == (5, 4, 8) and stack.data.dtype == np.uint16
    frames = J.IJ.createHyperStack("f", 8, 4, 1, 1, 3, 32)
    assert conv.imageplus_to_numpy(frames).axes == "TYX"


def test_lossless_dtype_conversions(conv, rng):
    cases = {
        np.bool_: (np.array([[True, False, True]]), np.uint8, 8),
        np.int8: (np.array([[-128, 0, 127]], np.int8), np.float32, 32),
        np.int16: (np.array([[-32768, -1, 32767]], np.int16), np.float32, 32),
        np.int32: (np.array([[-(2 ** 24), 0, 2 ** 24]], np.int32), np.float32, 32),
        np.uint32: (np.array([[0, 2 ** 24]], np.uint32), np.float32, 32),
        np.int64: (np.array([[-5, 2 ** 24]], np.int64), np.float32, 32),
        np.float16: (np.array([[-1.5, np.inf, 65504]], np.float16), np.float32, 32),
        np.float64: (np.array([[0.5, -2.0, np.nan, np.inf, 1e-40]]).astype(np.float32).astype(np.float64),
                     np.float32, 32),
        ">u2": (np.array([[1, 65535]], ">u2"), np.uint16, 16),
    }
    for data, out_dtype, bits in cases.values():
        imp = conv.numpy_to_imageplus(data, "YX")
        assert imp.getBitDepth() == bits
        back = conv.imageplus_to_numpy(imp).data
        assert back.dtype == out_dtype
        np.testing.assert_array_equal(back, data.astype(out_dtype))


def test_numpy_input_and_output_are_not_kept_alive(conv, rng):
    data = _random(rng, (3, 64, 64), np.uint16)
    imp = conv.numpy_to_imageplus(data, "ZYX")
    out = conv.imageplus_to_numpy(imp).data
    refs = [weakref.ref(data), weakref.ref(out)]
    del data, out
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_chunked_buffers(conv, rng, monkeypatch):
    """Several direct buffers, with planes and pixels straddling chunk boundaries."""
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 24)
    for data, axes in ((_random(rng, (3, 5, 7), np.uint16), "ZYX"), (_random(rng, (2, 5, 3, 3), np.uint8), "ZYXS"),
                       (_random(rng, (2, 3, 5), np.float32), "ZYX")):
        _same(conv.imageplus_to_numpy(conv.numpy_to_imageplus(data, axes)).data, data)
    for dtype in (np.uint8, np.int16, np.float64, np.int64):
        data = _random(rng, (3, 5, 7), dtype)
        _same(conv.imglib2_to_numpy(conv.numpy_to_imglib2(data)), data)


# ------------------------------------------------------------------------------ errors


def test_errors(conv, rng):
    with pytest.raises(ValueError, match=r"int64 with values in \[0, 16777217\] cannot be stored exactly"):
        conv.numpy_to_imageplus(np.array([[0, 2 ** 24 + 1]], np.int64), "YX")
    with pytest.raises(ValueError, match="uint32 with values"):
        conv.numpy_to_imageplus(np.array([[2 ** 31]], np.uint32), "YX")
    with pytest.raises(ValueError, match="float64 holds values that float32 cannot represent exactly"):
        conv.numpy_to_imageplus(np.array([[0.1]]), "YX")
    with pytest.raises(ValueError, match="complex128 has no ImageJ equivalent.*accepted"):
        conv.numpy_to_imageplus(np.zeros((2, 2), complex), "YX")
    with pytest.raises(ValueError, match="6 dimensions.*at most 5"):
        conv.numpy_to_imageplus(np.zeros((1,) * 6, np.uint8), "TZCYXQ")
    with pytest.raises(ValueError, match="unknown axis letters"):
        conv.numpy_to_imageplus(np.zeros((2, 2, 2), np.uint8), "QYX")
    with pytest.raises(ValueError, match="appears twice"):
        conv.numpy_to_imageplus(np.zeros((2, 2, 2), np.uint8), "YXY")
    with pytest.raises(ValueError, match="has 2 letters but the array has 3"):
        conv.numpy_to_imageplus(np.zeros((2, 2, 2), np.uint8), "YX")
    with pytest.raises(ValueError, match="S axis .* length 3, got 4"):
        conv.numpy_to_imageplus(np.zeros((2, 2, 4), np.uint8), "YXS")
    with pytest.raises(ValueError, match="RGB .* needs dtype uint8, got uint16"):
        conv.numpy_to_imageplus(np.zeros((2, 2, 3), np.uint16), "YXS")
    with pytest.raises(ValueError, match="non-empty"):
        conv.numpy_to_imageplus(np.zeros((0, 2, 2), np.uint8), "ZYX")
    with pytest.raises(TypeError, match="calibration must be"):
        conv.numpy_to_imageplus(np.zeros((2, 2), np.uint8), "YX", calibration=1.0)
    with pytest.raises(TypeError, match="data must be a numpy array"):
        conv.numpy_to_imageplus([[1, 2]], "YX")
    with pytest.raises(TypeError, match="imp must be an ij.ImagePlus"):
        conv.imageplus_to_numpy(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="img must be an ImgLib2 RandomAccessibleInterval"):
        conv.imglib2_to_numpy("not an image")
    with pytest.raises(ValueError, match="complex64 has no ImgLib2 equivalent"):
        conv.numpy_to_imglib2(np.zeros((2, 2), np.complex64))


def test_bulk_copies_check_sizes(conv):
    """A buffer that does not match the image exactly is an error, never a partial copy."""
    import jpype

    plane = jpype.JArray(jpype.JByte)(4)
    too_big = np.zeros(10, np.uint8)
    chunks = conv._Chunks(too_big, "b", writable=False)
    chunks.copy(plane, 4, True)
    chunks.copy(plane, 4, True)
    with pytest.raises(ValueError, match="2 bytes fewer than the numpy buffer"):
        chunks.finish()
    chunks = conv._Chunks(too_big[:6], "b", writable=False)
    chunks.copy(plane, 4, True)
    with pytest.raises(ValueError, match="numpy buffer is smaller than the image"):
        chunks.copy(plane, 4, True)


# ------------------------------------------------------------------------------ ImgLib2


def _fill_from_java(img, values: np.ndarray) -> None:
    """Set pixels through ImgLib2's own cursor: position (x, y, z, ...) <- values[..., z, y, x]."""
    from jpype import JLong

    cursor = img.localizingCursor()
    n = values.ndim
    while cursor.hasNext():
        t = cursor.next()
        pos = tuple(int(cursor.getLongPosition(d)) for d in range(n))
        v = values[pos[::-1]]
        if values.dtype.kind == "f":
            t.setReal(float(v))
        else:
            t.setInteger(JLong(int(v)))


@pytest.mark.parametrize("dtype,factory", [(np.uint8, "unsignedBytes"), (np.int8, "bytes"),
                                           (np.uint16, "unsignedShorts"), (np.int16, "shorts"),
                                           (np.int32, "ints"), (np.uint32, "unsignedInts"),
                                           (np.int64, "longs"), (np.float32, "floats"), (np.float64, "doubles")])
def test_java_made_images_to_numpy(conv, J, rng, dtype, factory):
    values = _random(rng, (3, 4, 5), dtype)
    for maker in (J.ArrayImgs, J.PlanarImgs):
        img = getattr(maker, factory)(5, 4, 3)
        _fill_from_java(img, values)
        _same(conv.imglib2_to_numpy(img), values)


def test_views_to_numpy(conv, J, rng):
    values = _random(rng, (3, 4, 5), np.float32)  # Z Y X
    img = J.PlanarImgs.floats(5, 4, 3)
    _fill_from_java(img, values)
    permuted = J.Views.permute(img, 0, 2)  # dims [Z, Y, X]
    _same(conv.imglib2_to_numpy(permuted), np.ascontiguousarray(values.transpose(2, 1, 0)))
    sub = J.Views.interval(img, [1, 0, 1], [3, 2, 2])  # x 1..3, y 0..2, z 1..2
    _same(conv.imglib2_to_numpy(sub), values[1:3, 0:3, 1:4].copy())
    both = J.Views.interval(permuted, [1, 1, 0], [2, 3, 4])  # z 1..2, y 1..3, x 0..4
    _same(conv.imglib2_to_numpy(both), np.ascontiguousarray(values.transpose(2, 1, 0)[0:5, 1:4, 1:3]))


@pytest.mark.parametrize("dtype,java_type", [
    (np.uint8, "UnsignedByteType"), (np.int8, "ByteType"), (np.uint16, "UnsignedShortType"),
    (np.int16, "ShortType"), (np.int32, "IntType"), (np.uint32, "UnsignedIntType"), (np.int64, "LongType"),
    (np.uint64, "UnsignedLongType"), (np.float32, "FloatType"), (np.float64, "DoubleType")])
def test_numpy_to_imglib2_round_trip(conv, rng, dtype, java_type):
    from jpype import JArray, JClass, JLong

    data = _random(rng, (2, 3, 4, 5), dtype)
    if np.dtype(dtype).kind == "f":
        data.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    else:
        info = np.iinfo(dtype)
        data.flat[:2] = [info.min, info.max]
    img = conv.numpy_to_imglib2(data)
    assert img.firstElement().getClass().getSimpleName() == java_type
    assert [int(img.dimension(d)) for d in range(4)] == [5, 4, 3, 2]
    ra = img.randomAccess()  # ImageJ-side read at (x, y, z, w) = (4, 1, 2, 1)
    ra.setPosition(JArray(JLong)([4, 1, 2, 1]))
    t = ra.get()
    expected = data[1, 2, 1, 4]
    if np.dtype(dtype).kind == "f":
        assert float(t.getRealDouble()) == float(expected)
    elif np.dtype(dtype) == np.uint64:
        assert int(t.getIntegerLong()) & 0xFFFFFFFFFFFFFFFF == int(expected)
    else:
        assert int(t.getIntegerLong()) == int(expected)
    _same(conv.imglib2_to_numpy(img), data)
    # the generic (cursor) path agrees with the bulk path
    _same(conv.imglib2_to_numpy(JClass("net.imglib2.view.Views").interval(img, img)), data)


def test_numpy_to_imglib2_layouts(conv, rng):
    base = _random(rng, (4, 6, 8), np.uint16)
    for view in (np.asfortranarray(base), base[::2, ::-1, 1::3], base.transpose(1, 2, 0)):
        _same(conv.imglib2_to_numpy(conv.numpy_to_imglib2(view)), np.ascontiguousarray(view))
    b = conv.imglib2_to_numpy(conv.numpy_to_imglib2(np.array([[True, False]])))
    assert b.dtype == np.uint8 and b.tolist() == [[1, 0]]


def test_unsupported_imglib2_types(conv, J):
    with pytest.raises(ValueError, match="ARGBType is not supported"):
        conv.imglib2_to_numpy(J.ArrayImgs.argbs(3, 2))
    with pytest.raises(ValueError, match="BitType is not supported"):
        conv.imglib2_to_numpy(J.ArrayImgs.bits(3, 2))


# ------------------------------------------------------------------------------ out=: existing destinations

OUT_LAYOUTS = [("YX", (5, 7)), ("ZYX", (4, 5, 7)), ("CYX", (3, 5, 7)), ("ZCYX", (4, 2, 5, 7)),
               ("TZCYX", (2, 3, 4, 5, 7))]
IMAGEJ_KINDS = {8: ("8-bit", np.uint8), 16: ("16-bit", np.uint16), 32: ("32-bit", np.float32), 24: ("RGB", np.uint8)}


def _imagej_made(J, shape_tzcyx, bits, title="made by ImageJ"):
    """An ImagePlus created by ImageJ itself (not by the converter), filled with a ramp."""
    t, z, c, h, w = shape_tzcyx
    return J.IJ.createImage(title, f"{IMAGEJ_KINDS[bits][0]} ramp", w, h, c, z, t)


def _planes_as_imagej_holds_them(imp) -> np.ndarray:
    """Every plane read straight from ImageJ's pixel arrays, in TZC order (RGB unpacked to R, G, B)."""
    stack = imp.getStack()
    planes = []
    for t in range(imp.getNFrames()):
        for z in range(imp.getNSlices()):
            for c in range(imp.getNChannels()):
                pixels = np.array(stack.getPixels(imp.getStackIndex(c + 1, z + 1, t + 1)))
                if imp.getBitDepth() == 24:
                    pixels = np.stack([(pixels >> 16) & 255, (pixels >> 8) & 255, pixels & 255], axis=-1)
                planes.append(pixels.astype(IMAGEJ_KINDS[imp.getBitDepth()][1]).reshape(imp.getHeight(),
                                                                                          imp.getWidth(), -1))
    return np.stack(planes)


@pytest.mark.parametrize("bits", [8, 16, 32, 24])
@pytest.mark.parametrize("axes,shape", OUT_LAYOUTS, ids=[a for a, _ in OUT_LAYOUTS])
def test_out_imageplus_round_trip(conv, J, rng, bits, axes, shape):
    """numpy -> existing ImagePlus -> existing numpy array, every pixel compared, nothing reallocated."""
    rgb = bits == 24
    full_axes, full_shape = (axes + "S", (*shape, 3)) if rgb else (axes, shape)
    data = _random(rng, full_shape, IMAGEJ_KINDS[bits][1])
    sizes = dict(zip(axes, shape))
    imp = _imagej_made(J, tuple(sizes.get(a, 1) for a in "TZCYX"), bits)
    stack = imp.getStack()
    planes_before = [stack.getPixels(i) for i in range(1, stack.getSize() + 1)]
    assert conv.numpy_to_imageplus(data, full_axes, out=imp) is imp
    assert imp.getTitle() == "made by ImageJ" and imp.getBitDepth() == bits
    expected = np.ascontiguousarray(to_axes(data, full_axes, "TZCYXS" if rgb else "TZCYX"))
    _same(_planes_as_imagej_holds_them(imp), expected.reshape(-1, *shape[-2:], 3 if rgb else 1))
    # written in place: the Java arrays the stack held before now hold the new pixels
    for i, before in enumerate(planes_before):
        _same(np.array(before), np.array(stack.getPixels(i + 1)))
    # the processor ImageJ shows reads the same memory
    x, y = shape[-1] - 1, shape[-2] - 1
    first = data.reshape(-1, *full_shape[len(axes) - 2:])[0]
    if rgb:
        v = int(imp.getProcessor().getPixel(x, y))
        assert ((v >> 16) & 255, (v >> 8) & 255, v & 255) == tuple(int(s) for s in first[y, x])
    elif bits == 32:
        assert np.float32(imp.getProcessor().getPixelValue(x, y)) == first[y, x]
    else:
        assert imp.getProcessor().getPixel(x, y) == first[y, x]
    out = np.full_like(data, 7)
    img = conv.imageplus_to_numpy(imp, out=out)
    assert img.data is out and img.axes == full_axes and img.title == "made by ImageJ"
    _same(out, data)


def test_out_imageplus_matches_new_conversion(conv, J, rng):
    """Into an existing array gives exactly what a new conversion gives, for an ImageJ-made hyperstack."""
    imp = _imagej_made(J, (2, 3, 2, 5, 7), 16)
    stack = imp.getStack()
    for i in range(1, stack.getSize() + 1):
        stack.getProcessor(i).putPixel(int(rng.integers(7)), int(rng.integers(5)), int(rng.integers(65536)))
    new = conv.imageplus_to_numpy(imp)
    out = np.zeros_like(new.data)
    _same(conv.imageplus_to_numpy(imp, out=out).data, new.data)


def test_out_imageplus_converts_input_dtype_and_layout(conv, J, rng):
    """The dtype table and any memory layout apply to data going into an existing ImagePlus too."""
    imp = _imagej_made(J, (1, 3, 1, 5, 7), 32)
    data = _random(rng, (7, 5, 3), np.int16)  # X Y Z, int16 -> 32-bit
    conv.numpy_to_imageplus(data, "XYZ", out=imp)
    _same(conv.imageplus_to_numpy(imp).data, data.transpose(2, 1, 0).astype(np.float32))
    mask = rng.random((6, 4)) > 0.5
    imp8 = _imagej_made(J, (1, 1, 1, 6, 4), 8)
    conv.numpy_to_imageplus(mask[::-1].T, "XY", out=imp8)
    _same(conv.imageplus_to_numpy(imp8).data, mask[::-1].astype(np.uint8))


def test_out_imageplus_title_and_calibration(conv, J, rng):
    cal = Calibration(pixel_width=0.5, pixel_height=0.25, voxel_depth=2.0, unit="µm", frame_interval=3.0,
                      time_unit="s")
    imp = conv.numpy_to_imageplus(np.zeros((2, 4, 4), np.uint8), "ZYX", title="kept", calibration=cal)
    conv.numpy_to_imageplus(np.ones((2, 4, 4), np.uint8), "ZYX", out=imp)
    got = conv.imageplus_to_numpy(imp)
    assert got.title == "kept" and got.calibration == cal and int(got.data.sum()) == 32
    conv.numpy_to_imageplus(np.ones((2, 4, 4), np.uint8), "ZYX", out=imp, title="new", calibration=Calibration())
    got = conv.imageplus_to_numpy(imp)
    assert got.title == "new" and got.calibration == Calibration()


def test_out_imglib2_round_trip(conv, J, rng):
    """numpy -> existing ArrayImg / PlanarImg -> existing numpy array, for every pixel type."""
    factories = {np.uint8: "unsignedBytes", np.int8: "bytes", np.uint16: "unsignedShorts", np.int16: "shorts",
                 np.int32: "ints", np.uint32: "unsignedInts", np.int64: "longs", np.uint64: "unsignedLongs",
                 np.float32: "floats", np.float64: "doubles"}
    for dtype, factory in factories.items():
        data = _random(rng, (3, 4, 5), dtype)
        for maker in (J.ArrayImgs, J.PlanarImgs):
            if maker is J.PlanarImgs and dtype == np.uint64:
                continue  # PlanarImgs has no unsignedLongs factory
            img = getattr(maker, factory)(5, 4, 3)
            assert conv.numpy_to_imglib2(data, out=img) is img
            from jpype import JArray, JLong

            ra = img.randomAccess()  # ImgLib2's own read at (x, y, z) = (4, 1, 2)
            ra.setPosition(JArray(JLong)([4, 1, 2]))
            if np.dtype(dtype).kind == "f":
                assert float(ra.get().getRealDouble()) == float(data[2, 1, 4])
            else:
                assert int(ra.get().getIntegerLong()) & 0xFFFFFFFFFFFFFFFF == int(data[2, 1, 4]) & 0xFFFFFFFFFFFFFFFF
            out = np.zeros_like(data)
            assert conv.imglib2_to_numpy(img, out=out) is out
            _same(out, data)
    # views (the cursor path) into an existing array, and bool / F-order input into an existing image
    img = J.ArrayImgs.unsignedBytes(4, 3)
    mask = np.asfortranarray(rng.random((3, 4)) > 0.5)
    conv.numpy_to_imglib2(mask, out=img)
    out = np.empty((3, 4), np.uint8)
    _same(conv.imglib2_to_numpy(J.Views.interval(img, img), out=out), mask.astype(np.uint8))


def test_out_chunked_buffers(conv, J, rng, monkeypatch):
    """Existing destinations filled from several buffers, planes and pixels straddling chunk ends."""
    monkeypatch.setattr(conv, "_CHUNK_BYTES", 24)
    for bits, axes, shape in ((16, "ZYX", (3, 5, 7)), (24, "ZYXS", (2, 5, 3, 3)), (32, "ZYX", (2, 3, 5))):
        data = _random(rng, shape, IMAGEJ_KINDS[bits][1])
        imp = _imagej_made(J, (1, shape[0], 1, shape[1], shape[2]), bits)
        conv.numpy_to_imageplus(data, axes, out=imp)
        out = np.empty_like(data)
        _same(conv.imageplus_to_numpy(imp, out=out).data, data)
    for dtype, factory in ((np.uint8, "unsignedBytes"), (np.float64, "doubles")):
        data = _random(rng, (3, 5, 7), dtype)
        for maker in (J.ArrayImgs, J.PlanarImgs):
            img = getattr(maker, factory)(7, 5, 3)
            conv.numpy_to_imglib2(data, out=img)
            out = np.empty_like(data)
            _same(conv.imglib2_to_numpy(img, out=out), data)


def test_out_numpy_errors(conv, J):
    """A numpy out that cannot take the image is refused before anything is written."""
    imp = _imagej_made(J, (1, 4, 1, 5, 7), 16, title="stack")
    img = J.ArrayImgs.floats(7, 5, 4)
    for convert, what in ((lambda out: conv.imageplus_to_numpy(imp, out=out), r"imp stack \(16-bit, axes 'ZYX'\)"),
                          (lambda out: conv.imglib2_to_numpy(img, out=out), r"img \(ImgLib2 dimensions \[7, 5, 4\]\)")):
        dtype = np.uint16 if "imp" in what else np.float32
        wrong_dtype = np.int16 if dtype == np.uint16 else np.float64
        with pytest.raises(ValueError, match=rf"out: shape \(4, 7, 5\) does not match {what}, which gives shape "
                                             r"\(4, 5, 7\)"):
            convert(np.zeros((4, 7, 5), dtype))
        with pytest.raises(ValueError, match=r"out: shape \(5, 7\) does not match"):
            convert(np.zeros((5, 7), dtype))
        with pytest.raises(ValueError, match=rf"out: dtype {np.dtype(wrong_dtype).name} does not match {what}, "
                                             rf"which gives {np.dtype(dtype).name}"):
            convert(np.zeros((4, 5, 7), wrong_dtype))
        with pytest.raises(ValueError, match="non-native byte order"):
            convert(np.zeros((4, 5, 7), np.dtype(dtype).newbyteorder("S")))
        with pytest.raises(ValueError, match=r"out must be C-contiguous .* strides"):
            convert(np.zeros((4, 5, 7), dtype, order="F"))
        with pytest.raises(ValueError, match="out must be C-contiguous"):
            convert(np.zeros((4, 5, 14), dtype)[:, :, ::2])
        read_only = np.full((4, 5, 7), 3, dtype)
        read_only.flags.writeable = False
        with pytest.raises(ValueError, match="out is read-only"):
            convert(read_only)
        assert (read_only == 3).all()
        with pytest.raises(TypeError, match="out must be a numpy array, got list"):
            convert([[0]])


def test_out_imageplus_errors(conv, J, rng):
    """An existing ImagePlus that does not match the data is refused before anything is written."""
    from jpype import JClass

    imp = _imagej_made(J, (1, 4, 1, 5, 7), 16, title="target")
    before = _planes_as_imagej_holds_them(imp)
    data = _random(rng, (4, 5, 7), np.uint16)
    with pytest.raises(ValueError, match=r"out target is 16-bit but data \(uint8, axes 'ZYX', shape \(4, 5, 7\)\) "
                                         r"is stored as 8-bit; convert the array first"):
        conv.numpy_to_imageplus(data.astype(np.uint8), "ZYX", out=imp)
    with pytest.raises(ValueError, match=r"out target is 16-bit but .* is stored as RGB"):
        conv.numpy_to_imageplus(_random(rng, (4, 5, 7, 3), np.uint8), "ZYXS", out=imp)
    with pytest.raises(ValueError, match=r"out target is 16-bit but data \(float32.* is stored as 32-bit"):
        conv.numpy_to_imageplus(data.astype(np.float32), "ZYX", out=imp)
    with pytest.raises(ValueError, match=r"out target has channels=1 slices=4 frames=1 height=5 width=7 but data "
                                         r"\(uint16, axes 'TYX', shape \(4, 5, 7\)\) has channels=1 slices=1 frames=4"):
        conv.numpy_to_imageplus(data, "TYX", out=imp)
    with pytest.raises(ValueError, match="height=5 width=7 but .* height=7 width=5"):
        conv.numpy_to_imageplus(data.transpose(0, 2, 1), "ZYX", out=imp)
    with pytest.raises(ValueError, match="slices=4 .* but .* slices=3"):
        conv.numpy_to_imageplus(data[:3], "ZYX", out=imp)
    _same(_planes_as_imagej_holds_them(imp), before)
    with pytest.raises(TypeError, match="out must be an ij.ImagePlus, got ndarray"):
        conv.numpy_to_imageplus(data, "ZYX", out=np.zeros_like(data))
    virtual = JClass("ij.ImagePlus")("virtual", JClass("ij.VirtualStack")(7, 5, 4))  # 8-bit, no pixel arrays
    with pytest.raises(ValueError, match="out virtual is a virtual stack"):
        conv.numpy_to_imageplus(data.astype(np.uint8), "ZYX", out=virtual)


def test_out_imglib2_errors(conv, J, rng):
    """An existing ImgLib2 image that does not match the data is refused before anything is written."""
    img = J.ArrayImgs.unsignedShorts(7, 5, 4)
    data = _random(rng, (4, 5, 7), np.uint16)
    with pytest.raises(ValueError, match=r"out holds FloatType pixels \(numpy float32\) but data \(uint16, shape "
                                         r"\(4, 5, 7\)\) is stored as uint16"):
        conv.numpy_to_imglib2(data, out=J.ArrayImgs.floats(7, 5, 4))
    with pytest.raises(ValueError, match=r"out has ImgLib2 dimensions \[7, 5, 4\] \(numpy shape \(4, 5, 7\)\) but "
                                         r"data \(uint16, shape \(4, 7, 5\)\) needs \[5, 7, 4\]"):
        conv.numpy_to_imglib2(data.transpose(0, 2, 1), out=img)
    with pytest.raises(ValueError, match="out must be an ArrayImg or PlanarImg .* got net.imglib2.view.IntervalView"):
        conv.numpy_to_imglib2(data, out=J.Views.interval(img, img))
    with pytest.raises(TypeError, match="out must be an ImgLib2 ArrayImg or PlanarImg, got ndarray"):
        conv.numpy_to_imglib2(data, out=np.zeros_like(data))
    assert not conv.imglib2_to_numpy(img).any()


def test_existing_destinations_are_checked_before_writing(conv, J):
    """A buffer of the wrong size for an existing stack/image is refused without writing any of it."""
    imp = _imagej_made(J, (1, 2, 1, 2, 2), 8)
    before = _planes_as_imagej_holds_them(imp)
    ones = np.ones(10, np.uint8)
    for buffer in (ones, ones[:6]):
        with pytest.raises(ValueError, match=f"the stack needs 8 bytes but the numpy buffer has {buffer.size}"):
            conv._planes(imp.getStack(), 8, buffer)
    with pytest.raises(ValueError, match="stack plane 1 is not a 16-bit plane of 4 pixels"):
        conv._planes(imp.getStack(), 16, ones[:8])
    _same(_planes_as_imagej_holds_them(imp), before)
