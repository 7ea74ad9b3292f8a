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
lines = []
for name in names:
    imp = IJ.openImage(os.path.join(input_dir.getAbsolutePath(), name))
    if imp is None:
        raise ValueError("could not open " + name)
    base = os.path.splitext(name)[0]
    IJ.run(imp, "ijtorch Segment", options)
    labels = WindowManager.getImage(os.path.splitext(imp.getTitle())[0] + "-labels")
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
        IJ.saveAs("Results", os.path.join(out, base + "_measurements.csv"))
    imp.close()
    lines.append("%s: %d objects" % (name, n))
    IJ.log(lines[-1])
summary = "\n".join(lines)
