// ijtorch example: fine-tune a segmentation model from ROIs drawn on the current image.
// Argument: "image=<tif> rois=<RoiSet.zip> name=<new model> base=<model> epochs=<n> steps=<n>"
// In Fiji: open the image, outline objects into the ROI Manager (or open a RoiSet), then run
// Plugins > ijtorch > ijtorch Train Segmentation; this macro does the same non-interactively.
args = getArgument();
open(parseArg(args, "image"));
roiManager("reset");
roiManager("Open", parseArg(args, "rois"));
print("annotated objects: " + roiManager("count"));
run("ijtorch Train Segmentation", "source=[current image + ROI Manager] name=[" + parseArg(args, "name")
    + "] base_model=[" + parseArg(args, "base") + "] epochs=" + parseArg(args, "epochs")
    + " steps=" + parseArg(args, "steps") + " patch_size=64");
run("ijtorch Macro Functions");
print("models: " + Ext.ijtorchListModels());
close();
roiManager("reset");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("train_from_rois.ijm: missing argument " + key + "=...");
}
