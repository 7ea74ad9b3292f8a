// Pixel classification from a few strokes (Plugins > ijtorch > Train Pixel Classifier / Classify Pixels).
// Open an image, draw a few lines or freehand strokes per class and add each to the ROI Manager with a
// name that starts with its class ("background_1", "nucleus_1", ...), then run this macro. Run it again
// after adding strokes: base_model warm-starts from the previous round.
// Argument (optional): name=<model name>
name = "my-pixels";
arg = getArgument();
if (startsWith(arg, "name=")) name = substring(arg, 5);
if (nImages == 0) exit("open an image and add class strokes to the ROI Manager first");
if (roiManager("count") == 0) exit("add strokes to the ROI Manager (named by class, e.g. nucleus_1) first");
source = getTitle();
models = "";
run("ijtorch Macro Functions");
Ext.ijtorchListModels(models);
base = "";
if (indexOf(models, name) >= 0) base = name;
run("ijtorch Train Pixel Classifier", "source=[ROI Manager] class_from=[ROI name prefix] name=" + name + " base_model=[" + base + "] steps=300");
selectImage(source);
run("ijtorch Classify Pixels", "model=" + name + " probabilities");
print("pixel classifier " + name + " trained and applied to " + source);
