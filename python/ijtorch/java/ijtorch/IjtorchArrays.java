package ijtorch;

import net.imglib2.Cursor;
import net.imglib2.IterableInterval;
import net.imglib2.RandomAccessibleInterval;
import net.imglib2.type.Type;
import net.imglib2.view.Views;

/**
 * The one pixel loop that cannot run as bulk copies from Python: an ImgLib2 image without primitive
 * storage (a view) copied pixel by pixel into an array-backed image of the same type. Bulk copies between
 * numpy and ImageJ / ImgLib2 arrays go through NIO buffers from Python (ijtorch/bridge/_convert.py).
 */
public final class IjtorchArrays {

    private IjtorchArrays() {
    }

    /** Copies {@code src} into {@code dst} (same type and size) in flat iteration order, X fastest. */
    @SuppressWarnings({"unchecked", "rawtypes"})
    public static void copy(RandomAccessibleInterval src, IterableInterval dst) {
        Cursor<Type> in = Views.flatIterable(src).cursor();
        Cursor<Type> out = Views.flatIterable((RandomAccessibleInterval) dst).cursor();
        while (in.hasNext()) {
            out.next().set(in.next());
        }
    }
}
