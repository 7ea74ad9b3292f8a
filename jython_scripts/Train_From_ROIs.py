#@ File (label="Folder of images with RoiSets (<name>.tif + <name>_RoiSet.zip)", style="directory") input_dir
#@ String (label="New model name", value="my-model") name
#@ String (label="Fine-tune from (empty = from scratch)", value="nuclei") base_model
#@ Integer (label="Epochs", value=10) epochs
#@ Integer (label="Steps per epoch", value=50) steps
#@ Integer (label="Patch size", value=128) patch_size
#@output String model_name
# ijtorch: train a segmentation model from images annotated with ROIs (one RoiSet zip per image).
# The ROIs become label maps (ROI i -> label i) in a temporary folder, then ijtorch Train Segmentation runs.
import os
import shutil
import tempfile
from ij import IJ, ImagePlus
from ij.plugin.frame import RoiManager
from ij.process import ShortProcessor

folder = input_dir.getAbsolutePath()
pairs = []
for n in sorted(os.listdir(folder)):
    base, ext = os.path.splitext(n)
    if ext.lower() in (".tif", ".tiff") and os.path.isfile(os.path.join(folder, base + "_RoiSet.zip")):
        pairs.append((n, base + "_RoiSet.zip"))
if not pairs:
    raise ValueError("no <name>.tif with a <name>_RoiSet.zip next to it in " + folder)
work = tempfile.mkdtemp(prefix="ijtorch-train-")
try:
    os.makedirs(os.path.join(work, "images"))
    os.makedirs(os.path.join(work, "labels"))
    rm = RoiManager(True)  # a hidden ROI Manager of our own
    for image_name, roi_name in pairs:
        imp = IJ.openImage(os.path.join(folder, image_name))
        rm.reset()
        rm.runCommand("Open", os.path.join(folder, roi_name))
        ip = ShortProcessor(imp.getWidth(), imp.getHeight())
        for i, roi in enumerate(rm.getRoisAsArray()):
            ip.setValue(i + 1)
            ip.fill(roi)
        base = os.path.splitext(image_name)[0]
        IJ.saveAs(imp, "Tiff", os.path.join(work, "images", base + ".tif"))
        IJ.saveAs(ImagePlus(base, ip), "Tiff", os.path.join(work, "labels", base + ".tif"))
        IJ.log("%s: %d annotated objects" % (image_name, rm.getCount()))
    rm.close()
    IJ.run("ijtorch Train Segmentation", "source=folders images=[%s] labels=[%s] name=[%s] base_model=[%s] "
           "epochs=%d steps=%d patch_size=%d" % (os.path.join(work, "images"), os.path.join(work, "labels"),
                                                  name, base_model, epochs, steps, patch_size))
finally:
    shutil.rmtree(work, True)
model_name = name
