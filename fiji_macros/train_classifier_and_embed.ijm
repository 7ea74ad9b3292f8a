// ijtorch example: object classification. ROIs named <class>_<n> (e.g. bright_001, dim_002) on the
// current image train a classifier; then every ROI is classified and embedded (features + clusters).
// Argument: "image=<tif> rois=<RoiSet.zip> epochs=<n>"
args = getArgument();
open(parseArg(args, "image"));
roiManager("reset");
roiManager("Open", parseArg(args, "rois"));
run("ijtorch Train Classifier", "source=[current image + ROI Manager] class_from=[ROI name prefix] name=example-classifier epochs="
    + parseArg(args, "epochs") + " size=24 val_fraction=0");
run("ijtorch Classify", "model=example-classifier source=[ROI Manager]");
print("classified: " + nResults);
run("ijtorch Macro Functions");
print("classes: " + Ext.ijtorchClassifierClasses("example-classifier"));
run("ijtorch Embed", "model=example-classifier source=[ROI Manager] clusters=2");
selectWindow("Embeddings");
print("embedded: " + Table.size);
roiManager("reset");
close("*");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("train_classifier_and_embed.ijm: missing argument " + key + "=...");
}
