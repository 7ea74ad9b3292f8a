#@ File (label="Folder of noisy images", style="directory") input_dir
#@ File (label="Output folder", style="directory") output_dir
#@ String (label="Saved model (empty = train Noise2Void on each image)", value="") model
#@ Integer (label="Epochs (Noise2Void training)", value=10) epochs
#@ Integer (label="Steps per epoch (Noise2Void training)", value=50) steps
#@ String (label="File extension", value=".tif") extension
#@output String summary
# ijtorch: denoise every image of a folder with a saved restoration model, or Noise2Void trained per image.
import os
from ij import IJ, Menus, WindowManager

COMMAND = "ijtorch Restore" if model else "ijtorch Denoise (Noise2Void)"
commands = Menus.getCommands()
if commands is None or not commands.containsKey(COMMAND):
    raise RuntimeError("'%s' is not available in this ijtorch installation: this version has no denoising "
                       "commands. Update ijtorch (and Fiji's ijtorch plugin with 'ijtorch install-fiji')." % COMMAND)
out = output_dir.getAbsolutePath()
if not os.path.isdir(out):
    os.makedirs(out)
names = sorted(n for n in os.listdir(input_dir.getAbsolutePath()) if n.lower().endswith(extension.lower()))
if not names:
    raise ValueError("no %s files in %s" % (extension, input_dir))
for name in names:
    imp = IJ.openImage(os.path.join(input_dir.getAbsolutePath(), name))
    WindowManager.setTempCurrentImage(imp)  # as IJ.run(imp, ...), but the result is read before it is reset
    try:
        if model:
            IJ.run(COMMAND, "model=[%s]" % model)
        else:
            IJ.run(COMMAND, "mode=[train on this image] epochs=%d steps=%d" % (epochs, steps))
        result = WindowManager.getCurrentImage()  # headless: the result, which has no window
    finally:
        WindowManager.setTempCurrentImage(None)
    if result is None or result == imp:  # with windows: the result is the active window's image
        result = WindowManager.getCurrentImage()
    if result is None or result == imp:
        raise RuntimeError(COMMAND + " made no result image for " + name)
    IJ.saveAs(result, "Tiff", os.path.join(out, os.path.splitext(name)[0] + ".tif"))
    result.changes = False
    result.close()
    imp.close()
summary = "%d image(s) denoised into %s" % (len(names), out)
