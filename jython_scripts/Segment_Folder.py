#@ File (label="Folder of images", style="directory") input_dir
#@ File (label="Output folder", style="directory") output_dir
#@ String (label="Model", value="nuclei") model
#@ String (label="File extension", value=".tif") extension
#@ Boolean (label="Also save ROIs and measurements", value=false) save_rois
#@ Float (label="Scale (2 = nuclei half the training size)", value=1.0) scale
#@ Boolean (label="Test-time augmentation (8x slower)", value=false) test_time_augmentation
#@output String summary
# ijtorch: segment every image of a folder; writes <name>.tif label maps (and RoiSets/CSVs).
# ImageJ 1.x API only, so it runs in Fiji (Plugins > ijtorch) and in ijtorch's embedded Jython.
import os
from ij import IJ, WindowManager
from ij.plugin.frame import RoiManager

out = output_dir.getAbsolutePath()
if not os.path.isdir(out):
    os.makedirs(out)
names = sorted(n for n in os.listdir(input_dir.getAbsolutePath()) if n.lower().endswith(extension.lower()))
if not names:
    raise ValueError("no %s files in %s" % (extension, input_dir))
what = "all" if save_rois else "[label map]"
options = "model=[%s] scale=%s output=%s" % (model, scale, what)
if test_time_augmentation:
    options += " test_time_augmentation"


def save_roiset(rois, path):
    """A RoiSet.zip as the ROI Manager saves it (one .roi entry per ROI)."""
    from java.io import FileOutputStream
    from java.util.zip import ZipEntry, ZipOutputStream
    from ij.io import RoiEncoder
    zos = ZipOutputStream(FileOutputStream(path))
    try:
        for i, roi in enumerate(rois):
            zos.putNextEntry(ZipEntry("%s.roi" % (roi.getName() or "%04d" % (i + 1))))
            zos.write(RoiEncoder.saveAsByteArray(roi))
    finally:
        zos.close()


lines = []
for name in names:
    imp = IJ.openImage(os.path.join(input_dir.getAbsolutePath(), name))
    if imp is None:
        raise ValueError("could not open " + name)
    base = os.path.splitext(name)[0]
    title = os.path.splitext(imp.getTitle())[0] + "-labels"
    WindowManager.setTempCurrentImage(imp)  # as IJ.run(imp, ...), but the result is read before it is reset
    try:
        IJ.run("ijtorch Segment", options)
        current = WindowManager.getCurrentImage()  # headless: the result, which has no window
    finally:
        WindowManager.setTempCurrentImage(None)
    labels = WindowManager.getImage(title)
    if labels is None and current is not None and current.getTitle() == title:
        labels = current
    if labels is None:
        raise RuntimeError("ijtorch Segment made no label image for " + name)
    n = int(labels.getStatistics().max)
    IJ.saveAs(labels, "Tiff", os.path.join(out, base + ".tif"))
    labels.changes = False
    labels.close()
    if save_rois:
        rm = RoiManager.getInstance()
        if rm is not None and rm.getCount() > 0:
            rm.runCommand("Save", os.path.join(out, base + "_RoiSet.zip"))
            rm.reset()
        elif labels.getOverlay() is not None:  # headless (no ROI Manager): the ROIs are on the overlay
            save_roiset(labels.getOverlay().toArray(), os.path.join(out, base + "_RoiSet.zip"))
        IJ.saveAs("Results", os.path.join(out, base + "_measurements.csv"))
    imp.close()
    lines.append("%s: %d objects" % (name, n))
    IJ.log(lines[-1])
summary = "\n".join(lines)
