package ijtorch;

import ij.ImageStack;

import net.imglib2.Cursor;
import net.imglib2.RandomAccessibleInterval;
import net.imglib2.img.Img;
import net.imglib2.img.array.ArrayImg;
import net.imglib2.img.array.ArrayImgs;
import net.imglib2.img.basictypeaccess.array.ArrayDataAccess;
import net.imglib2.img.planar.PlanarImg;
import net.imglib2.type.numeric.IntegerType;
import net.imglib2.type.numeric.RealType;
import net.imglib2.type.numeric.integer.ByteType;
import net.imglib2.type.numeric.integer.IntType;
import net.imglib2.type.numeric.integer.LongType;
import net.imglib2.type.numeric.integer.ShortType;
import net.imglib2.type.numeric.integer.UnsignedByteType;
import net.imglib2.type.numeric.integer.UnsignedIntType;
import net.imglib2.type.numeric.integer.UnsignedLongType;
import net.imglib2.type.numeric.integer.UnsignedShortType;
import net.imglib2.type.numeric.real.DoubleType;
import net.imglib2.type.numeric.real.FloatType;
import net.imglib2.util.Util;
import net.imglib2.view.Views;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Bulk pixel copies between ImageJ / ImgLib2 storage and direct byte buffers that wrap numpy
 * memory (made by {@code jpype.nio.convertToDirectBuffer}). One Python call moves a whole image:
 * the per-plane loop runs here, so small stacks pay no per-plane bridge overhead.
 *
 * <p>Large images arrive as several buffers ("chunks", each below 2 GiB, a multiple of 8 bytes
 * long) that together cover the numpy array in C order; {@link Chunks} walks them. Every buffer
 * is read and written in the platform's native byte order, which is numpy's.
 */
public final class IjtorchArrays {

    private IjtorchArrays() {
    }

    /** Sequential reader/writer over consecutive byte buffers, in native byte order. */
    static final class Chunks {
        private final ByteBuffer[] buffers;
        private int index;
        private ByteBuffer current;

        Chunks(ByteBuffer[] buffers) {
            this.buffers = buffers;
            this.index = -1;
            advance();
        }

        private void advance() {
            index++;
            if (index >= buffers.length) {
                current = null;
                return;
            }
            current = buffers[index].duplicate().order(ByteOrder.nativeOrder());
            current.clear();
        }

        /** Throw unless every byte of every chunk was read or written: sizes must match exactly. */
        void finish() {
            long left = current == null ? 0 : current.remaining();
            for (int i = index + 1; i < buffers.length; i++) {
                left += buffers[i].capacity();
            }
            if (left != 0) {
                throw new IllegalArgumentException("the image has " + left + " bytes fewer than the numpy buffer");
            }
        }

        /** Elements of {@code size} bytes that fit in the current chunk (advancing when full). */
        private int room(int size) {
            while (current != null && current.remaining() < size) {
                advance();
            }
            if (current == null) {
                throw new IllegalArgumentException("the numpy buffer is smaller than the image");
            }
            return current.remaining() / size;
        }

        void put(Object array, int off, int len) {
            while (len > 0) {
                int n;
                if (array instanceof byte[]) {
                    n = Math.min(len, room(1));
                    current.put((byte[]) array, off, n);
                } else if (array instanceof short[]) {
                    n = Math.min(len, room(2));
                    current.asShortBuffer().put((short[]) array, off, n);
                    current.position(current.position() + 2 * n);
                } else if (array instanceof int[]) {
                    n = Math.min(len, room(4));
                    current.asIntBuffer().put((int[]) array, off, n);
                    current.position(current.position() + 4 * n);
                } else if (array instanceof float[]) {
                    n = Math.min(len, room(4));
                    current.asFloatBuffer().put((float[]) array, off, n);
                    current.position(current.position() + 4 * n);
                } else if (array instanceof long[]) {
                    n = Math.min(len, room(8));
                    current.asLongBuffer().put((long[]) array, off, n);
                    current.position(current.position() + 8 * n);
                } else if (array instanceof double[]) {
                    n = Math.min(len, room(8));
                    current.asDoubleBuffer().put((double[]) array, off, n);
                    current.position(current.position() + 8 * n);
                } else {
                    throw new IllegalArgumentException("unsupported pixel array " + array.getClass());
                }
                off += n;
                len -= n;
            }
        }

        void get(Object array, int off, int len) {
            while (len > 0) {
                int n;
                if (array instanceof byte[]) {
                    n = Math.min(len, room(1));
                    current.get((byte[]) array, off, n);
                } else if (array instanceof short[]) {
                    n = Math.min(len, room(2));
                    current.asShortBuffer().get((short[]) array, off, n);
                    current.position(current.position() + 2 * n);
                } else if (array instanceof int[]) {
                    n = Math.min(len, room(4));
                    current.asIntBuffer().get((int[]) array, off, n);
                    current.position(current.position() + 4 * n);
                } else if (array instanceof float[]) {
                    n = Math.min(len, room(4));
                    current.asFloatBuffer().get((float[]) array, off, n);
                    current.position(current.position() + 4 * n);
                } else if (array instanceof long[]) {
                    n = Math.min(len, room(8));
                    current.asLongBuffer().get((long[]) array, off, n);
                    current.position(current.position() + 8 * n);
                } else if (array instanceof double[]) {
                    n = Math.min(len, room(8));
                    current.asDoubleBuffer().get((double[]) array, off, n);
                    current.position(current.position() + 8 * n);
                } else {
                    throw new IllegalArgumentException("unsupported pixel array " + array.getClass());
                }
                off += n;
                len -= n;
            }
        }
    }

    // ---------------------------------------------------------------- ImageJ 1.x stacks

    /**
     * Copy every plane of {@code stack} (in stack order) into the chunks. RGB planes (int[]) are
     * written as interleaved R, G, B bytes (numpy ...YXS).
     */
    public static void stackToBuffers(ImageStack stack, ByteBuffer[] dst) {
        Chunks out = new Chunks(dst);
        int n = stack.getSize();
        byte[] rgb = null;
        for (int i = 1; i <= n; i++) {
            Object pixels = stack.getPixels(i);
            if (pixels == null) {
                throw new IllegalArgumentException("stack plane " + i + " has no pixels");
            }
            if (pixels instanceof int[]) {
                int[] p = (int[]) pixels;
                if (rgb == null) {
                    rgb = new byte[3 * p.length];
                }
                for (int k = 0, j = 0; k < p.length; k++, j += 3) {
                    int c = p[k];
                    rgb[j] = (byte) (c >> 16);
                    rgb[j + 1] = (byte) (c >> 8);
                    rgb[j + 2] = (byte) c;
                }
                out.put(rgb, 0, rgb.length);
            } else {
                out.put(pixels, 0, java.lang.reflect.Array.getLength(pixels));
            }
        }
        out.finish();
    }

    /**
     * A new stack of {@code n} planes of {@code width x height} pixels with the given bit depth
     * (8, 16, 32 or 24 for RGB), filled from the chunks in stack order. Each plane is allocated
     * right before it is filled, so it is still in cache.
     */
    public static ImageStack buffersToStack(ByteBuffer[] src, int width, int height, int n, int bitDepth) {
        Chunks in = new Chunks(src);
        ImageStack stack = new ImageStack(width, height, n);
        int len = width * height;
        byte[] rgb = bitDepth == 24 ? new byte[3 * len] : null;
        for (int i = 1; i <= n; i++) {
            Object pixels;
            switch (bitDepth) {
                case 8:
                    pixels = new byte[len];
                    break;
                case 16:
                    pixels = new short[len];
                    break;
                case 32:
                    pixels = new float[len];
                    break;
                case 24:
                    pixels = new int[len];
                    break;
                default:
                    throw new IllegalArgumentException("bit depth must be 8, 16, 24 or 32, not " + bitDepth);
            }
            readPlane(in, pixels, rgb);
            stack.setPixels(pixels, i);
        }
        in.finish();
        return stack;
    }

    /**
     * Fill the existing plane arrays of {@code stack} from the chunks, in stack order, without
     * allocating planes: the preallocated-destination path, which skips Java's zero-filling of
     * new arrays. Every plane must hold {@code width * height} pixels of the type of
     * {@code bitDepth} (8: byte[], 16: short[], 32: float[], 24 (RGB): int[]); nothing is written
     * unless all planes do. RGB planes are filled from interleaved R, G, B bytes, alpha 0xff.
     */
    public static void buffersIntoStack(ByteBuffer[] src, ImageStack stack, int bitDepth) {
        Class<?> type;
        switch (bitDepth) {
            case 8: type = byte[].class; break;
            case 16: type = short[].class; break;
            case 32: type = float[].class; break;
            case 24: type = int[].class; break;
            default:
                throw new IllegalArgumentException("bit depth must be 8, 16, 24 or 32, not " + bitDepth);
        }
        int n = stack.getSize();
        int len = stack.getWidth() * stack.getHeight();
        Object[] planes = new Object[n];
        for (int i = 1; i <= n; i++) {
            Object pixels = stack.getPixels(i);
            if (pixels == null || pixels.getClass() != type || java.lang.reflect.Array.getLength(pixels) != len) {
                throw new IllegalArgumentException("stack plane " + i + " is not a " + bitDepth + "-bit plane of "
                        + len + " pixels (" + (pixels == null ? "no pixels" : pixels.getClass().getSimpleName()
                        + " of " + java.lang.reflect.Array.getLength(pixels)) + ")");
            }
            planes[i - 1] = pixels;
        }
        checkSize("stack", (long) n * len * (bitDepth == 8 ? 1 : bitDepth == 16 ? 2 : bitDepth == 24 ? 3 : 4), src);
        Chunks in = new Chunks(src);
        byte[] rgb = bitDepth == 24 ? new byte[3 * len] : null;
        for (Object pixels : planes) {
            readPlane(in, pixels, rgb);
        }
        in.finish();
    }

    /**
     * Throw unless the chunks hold exactly {@code needed} bytes; existing destinations are checked
     * before the first byte is written, so a size mismatch never leaves a partial copy.
     */
    private static void checkSize(String what, long needed, ByteBuffer[] src) {
        long given = 0;
        for (ByteBuffer b : src) {
            given += b.capacity();
        }
        if (needed != given) {
            throw new IllegalArgumentException("the " + what + " needs " + needed + " bytes but the numpy buffer has "
                    + given);
        }
    }

    /** Bytes per element of a primitive pixel array that {@link Chunks} can fill. */
    private static int elementBytes(Object array) {
        if (array instanceof byte[]) return 1;
        if (array instanceof short[]) return 2;
        if (array instanceof int[] || array instanceof float[]) return 4;
        if (array instanceof long[] || array instanceof double[]) return 8;
        throw new IllegalArgumentException("unsupported pixel array " + array.getClass());
    }

    /** Fill one plane from the chunks; {@code rgb} is scratch space for RGB planes (else null). */
    private static void readPlane(Chunks in, Object pixels, byte[] rgb) {
        if (rgb != null) {
            in.get(rgb, 0, rgb.length);
            int[] p = (int[]) pixels;
            for (int k = 0, j = 0; k < p.length; k++, j += 3) {
                p[k] = 0xff000000 | ((rgb[j] & 0xff) << 16) | ((rgb[j + 1] & 0xff) << 8) | (rgb[j + 2] & 0xff);
            }
        } else {
            in.get(pixels, 0, java.lang.reflect.Array.getLength(pixels));
        }
    }

    // ---------------------------------------------------------------- ImgLib2

    /**
     * numpy dtype name of the pixel type of {@code rai} ("uint8", "int8", "uint16", "int16",
     * "int32", "uint32", "int64", "uint64", "float32", "float64"), or the Java class name of an
     * unsupported type.
     */
    public static String dtypeOf(RandomAccessibleInterval<?> rai) {
        Object t = rai instanceof Img ? ((Img<?>) rai).firstElement() : Util.getTypeFromInterval(rai);
        Class<?> c = t.getClass();
        if (c == UnsignedByteType.class) return "uint8";
        if (c == ByteType.class) return "int8";
        if (c == UnsignedShortType.class) return "uint16";
        if (c == ShortType.class) return "int16";
        if (c == IntType.class) return "int32";
        if (c == UnsignedIntType.class) return "uint32";
        if (c == LongType.class) return "int64";
        if (c == UnsignedLongType.class) return "uint64";
        if (c == FloatType.class) return "float32";
        if (c == DoubleType.class) return "float64";
        return c.getName();
    }

    /** The primitive storage array of an ArrayImg, or null when it is not array-backed. */
    public static Object arrayImgStorage(ArrayImg<?, ?> img) {
        Object access = img.update(null);
        if (!(access instanceof ArrayDataAccess)) {
            return null;
        }
        Object array = ((ArrayDataAccess<?>) access).getCurrentStorageArray();
        long n = img.size();
        if (array == null || java.lang.reflect.Array.getLength(array) != n) {
            return null;  // e.g. BitType packing: not one element per pixel
        }
        return array;
    }

    /** Copy an array-backed ArrayImg into the chunks; false when it is not array-backed. */
    public static boolean arrayImgToBuffers(ArrayImg<?, ?> img, ByteBuffer[] dst) {
        Object array = arrayImgStorage(img);
        if (array == null) {
            return false;
        }
        Chunks out = new Chunks(dst);
        out.put(array, 0, java.lang.reflect.Array.getLength(array));
        out.finish();
        return true;
    }

    /** Copy a PlanarImg plane by plane into the chunks; false when a plane is not array-backed. */
    public static boolean planarImgToBuffers(PlanarImg<?, ?> img, ByteBuffer[] dst) {
        int planes = img.numSlices();
        long perPlane = img.dimension(0) * (img.numDimensions() > 1 ? img.dimension(1) : 1);
        Object[] arrays = new Object[planes];
        for (int i = 0; i < planes; i++) {
            Object access = img.getPlane(i);
            if (!(access instanceof ArrayDataAccess)) {
                return false;
            }
            arrays[i] = ((ArrayDataAccess<?>) access).getCurrentStorageArray();
            if (arrays[i] == null || java.lang.reflect.Array.getLength(arrays[i]) != perPlane) {
                return false;
            }
        }
        Chunks out = new Chunks(dst);
        for (Object a : arrays) {
            out.put(a, 0, (int) perPlane);
        }
        out.finish();
        return true;
    }

    /**
     * Fill the existing storage of an array-backed ArrayImg or PlanarImg from the chunks (C order
     * of the reversed dimensions), without allocating; false (nothing written) when {@code img}
     * is neither or not array-backed. The chunks must cover the image exactly: checked before
     * anything is written.
     */
    public static boolean buffersIntoImg(ByteBuffer[] src, RandomAccessibleInterval<?> img) {
        Object[] arrays;
        if (img instanceof ArrayImg) {
            Object array = arrayImgStorage((ArrayImg<?, ?>) img);
            if (array == null) {
                return false;
            }
            arrays = new Object[] {array};
        } else if (img instanceof PlanarImg) {
            PlanarImg<?, ?> planar = (PlanarImg<?, ?>) img;
            long perPlane = planar.dimension(0) * (planar.numDimensions() > 1 ? planar.dimension(1) : 1);
            arrays = new Object[planar.numSlices()];
            for (int i = 0; i < arrays.length; i++) {
                Object access = planar.getPlane(i);
                if (!(access instanceof ArrayDataAccess)) {
                    return false;
                }
                arrays[i] = ((ArrayDataAccess<?>) access).getCurrentStorageArray();
                if (arrays[i] == null || java.lang.reflect.Array.getLength(arrays[i]) != perPlane) {
                    return false;
                }
            }
        } else {
            return false;
        }
        long needed = 0;
        for (Object a : arrays) {
            needed += (long) elementBytes(a) * java.lang.reflect.Array.getLength(a);
        }
        checkSize("image", needed, src);
        Chunks in = new Chunks(src);
        for (Object a : arrays) {
            in.get(a, 0, java.lang.reflect.Array.getLength(a));
        }
        in.finish();
        return true;
    }

    /**
     * Copy any RandomAccessibleInterval of a supported type (see {@link #dtypeOf}) into the
     * chunks, in flat iteration order (X fastest), which is C order of the reversed dimensions.
     */
    @SuppressWarnings({"unchecked", "rawtypes"})
    public static void raiToBuffers(RandomAccessibleInterval<?> rai, ByteBuffer[] dst) {
        String dtype = dtypeOf(rai);
        Chunks out = new Chunks(dst);
        Cursor<?> c = Views.flatIterable((RandomAccessibleInterval) rai).cursor();
        final int block = 1 << 16;
        int k = 0;
        switch (dtype) {
            case "uint8":
            case "int8": {
                byte[] s = new byte[block];
                while (c.hasNext()) {
                    s[k++] = (byte) ((IntegerType<?>) c.next()).getIntegerLong();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            case "uint16":
            case "int16": {
                short[] s = new short[block];
                while (c.hasNext()) {
                    s[k++] = (short) ((IntegerType<?>) c.next()).getIntegerLong();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            case "uint32":
            case "int32": {
                int[] s = new int[block];
                while (c.hasNext()) {
                    s[k++] = (int) ((IntegerType<?>) c.next()).getIntegerLong();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            case "uint64":
            case "int64": {
                long[] s = new long[block];
                while (c.hasNext()) {
                    s[k++] = ((IntegerType<?>) c.next()).getIntegerLong();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            case "float32": {
                float[] s = new float[block];
                while (c.hasNext()) {
                    s[k++] = ((RealType<?>) c.next()).getRealFloat();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            case "float64": {
                double[] s = new double[block];
                while (c.hasNext()) {
                    s[k++] = ((RealType<?>) c.next()).getRealDouble();
                    if (k == block) { out.put(s, 0, k); k = 0; }
                }
                out.put(s, 0, k);
                break;
            }
            default:
                throw new IllegalArgumentException("unsupported ImgLib2 pixel type " + dtype);
        }
        out.finish();
    }

    /**
     * A new ArrayImg of the given numpy dtype name and ImgLib2 dimensions (X first), filled from
     * the chunks.
     */
    public static ArrayImg<?, ?> buffersToArrayImg(String dtype, long[] dims, ByteBuffer[] src) {
        ArrayImg<?, ?> img;
        switch (dtype) {
            case "uint8": img = ArrayImgs.unsignedBytes(dims); break;
            case "int8": img = ArrayImgs.bytes(dims); break;
            case "uint16": img = ArrayImgs.unsignedShorts(dims); break;
            case "int16": img = ArrayImgs.shorts(dims); break;
            case "uint32": img = ArrayImgs.unsignedInts(dims); break;
            case "int32": img = ArrayImgs.ints(dims); break;
            case "uint64": img = ArrayImgs.unsignedLongs(dims); break;
            case "int64": img = ArrayImgs.longs(dims); break;
            case "float32": img = ArrayImgs.floats(dims); break;
            case "float64": img = ArrayImgs.doubles(dims); break;
            default:
                throw new IllegalArgumentException("unsupported dtype " + dtype);
        }
        Object array = arrayImgStorage(img);
        Chunks in = new Chunks(src);
        in.get(array, 0, java.lang.reflect.Array.getLength(array));
        in.finish();
        return img;
    }
}
