package ijtorch;

import ij.gui.PolygonRoi;
import ij.gui.Roi;
import ij.plugin.frame.RoiManager;

import java.awt.Component;
import java.awt.Container;
import java.util.Arrays;
import javax.swing.DefaultListModel;
import javax.swing.JList;
import javax.swing.ListModel;
import javax.swing.SwingUtilities;

/**
 * Bulk transfer of polygon ROIs from Python into a RoiManager: data transfer only, no logic.
 *
 * <p>{@code RoiManager.addRoi} updates the visible list once per ROI, which costs milliseconds
 * each for thousands of ROIs. Here the manager's JList is detached from its list model while the
 * ROIs are appended through the public {@code add(Roi, int)} (which only appends a label and a
 * clone), then attached again, so the list view is rebuilt once. All of it runs on the Swing
 * event thread so painting never sees a half-filled list.
 */
public final class IjtorchRois {

    private IjtorchRois() {
    }

    /** Builds one POLYGON roi per object (see {@link #polygons}) and appends them to {@code rm}, emptied
     *  first when {@code reset}; returns the number of ROIs in the manager afterwards. */
    public static int addPolygons(final RoiManager rm, final float[] xs, final float[] ys, final int[] offsets,
                                  final String[] names, final int[] c, final int[] z, final int[] t,
                                  final boolean integer, final boolean reset) throws Exception {
        final Roi[] rois = polygons(xs, ys, offsets, names, c, z, t, integer);
        return addAll(rm, rois, reset);
    }

    /** Polygon ROIs from flat coordinate arrays (no ROI Manager needed: usable headless): polygon i owns
     *  [offsets[i], offsets[i+1]) of xs and ys, its name and 1-based C, Z, T positions (0 = unset) are
     *  the i-th entries; {@code integer} builds integer-coordinate polygons (whole-number coordinates). */
    public static Roi[] polygons(final float[] xs, final float[] ys, final int[] offsets, final String[] names,
                                 final int[] c, final int[] z, final int[] t, final boolean integer) {
        final int n = names.length;
        final Roi[] rois = new Roi[n];
        for (int i = 0; i < n; i++) {
            final int from = offsets[i];
            final int to = offsets[i + 1];
            final Roi roi;
            if (integer) {
                final int m = to - from;
                final int[] xi = new int[m];
                final int[] yi = new int[m];
                for (int k = 0; k < m; k++) {
                    xi[k] = (int) xs[from + k];
                    yi[k] = (int) ys[from + k];
                }
                roi = new PolygonRoi(xi, yi, m, Roi.POLYGON);
            } else {
                roi = new PolygonRoi(Arrays.copyOfRange(xs, from, to), Arrays.copyOfRange(ys, from, to),
                        to - from, Roi.POLYGON);
            }
            roi.setName(names[i]);
            if (c[i] > 0 || z[i] > 0 || t[i] > 0) {
                roi.setPosition(c[i], z[i], t[i]);
            }
            rois[i] = roi;
        }
        return rois;
    }

    static int addAll(final RoiManager rm, final Roi[] rois, final boolean reset) throws Exception {
        final Runnable add = () -> {
            if (reset) {
                rm.reset();
            }
            final JList<?> list = findList(rm);
            ListModel model = null;
            if (list != null) {
                model = list.getModel();
                ((JList) list).setModel(new DefaultListModel());
            }
            try {
                for (Roi roi : rois) {
                    rm.add(roi, -1);
                }
            } finally {
                if (list != null) {
                    ((JList) list).setModel(model);
                }
            }
        };
        if (SwingUtilities.isEventDispatchThread()) {
            add.run();
        } else {
            SwingUtilities.invokeAndWait(add);
        }
        return rm.getCount();
    }

    /** The manager's list component, found in its window's component tree (null if it has none). */
    static JList<?> findList(final Container container) {
        for (Component child : container.getComponents()) {
            if (child instanceof JList) {
                return (JList<?>) child;
            }
            if (child instanceof Container) {
                final JList<?> found = findList((Container) child);
                if (found != null) {
                    return found;
                }
            }
        }
        return null;
    }
}
