// ijtorch example: classify every ROI of the ROI Manager on the current image with a classifier,
// then print one line per ROI: "name<TAB>class<TAB>probability<TAB>stroke colour".
// Argument: "model=<classifier name or folder>" (no spaces in the value).
// In Fiji: open an image, add ROIs (or run ijtorch Segment), then run this macro.
// Train a classifier first with Plugins > ijtorch > ijtorch Train Classifier (ROIs named e.g.
// mitotic_001, interphase_002 give the classes mitotic and interphase).
model = parseArg(getArgument(), "model");
run("ijtorch Classify", "model=[" + model + "] source=[ROI Manager]");
// the Results table has one row per ROI: object, class, probability, p_<class> per class
for (i = 0; i < nResults; i++) {
    roiManager("select", i);
    print(getResultString("object", i) + "\t" + getResultString("class", i) + "\t"
          + d2s(getResult("probability", i), 4) + "\t" + Roi.getStrokeColor);
}
roiManager("deselect");
run("Select None");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++) {
        if (startsWith(parts[k], key + "="))
            return substring(parts[k], lengthOf(key) + 1);
    }
    exit("classify_rois.ijm: missing argument " + key + "=...");
}
