// ijtorch demo: segment nuclei with the bundled star-convex model and save what a person looks at.
// Argument: "input=[<folder>] output=[<folder>] files=[a.tif,b.tif,...]"  (make demo passes it;
// [brackets] as in ImageJ's own options keep paths with spaces whole).
// Works the same in Fiji with ijtorch installed (Plugins > ijtorch > ijtorch Segment).
args = getArgument();
input = requiredArg(args, "input");
output = requiredArg(args, "output");
files = split(requiredArg(args, "files"), ",");
File.makeDirectory(output);
// batch mode: no image windows, so nothing repaints the ROIs while Flatten draws them
setBatchMode(true);
total = 0;
for (i = 0; i < files.length; i++) {
    name = files[i];
    base = File.getNameWithoutExtension(name);
    open(input + File.separator + name);
    original = getImageID();
    run("ijtorch Segment", "model=nuclei output=all");
    // the label map is now the active image: 16-bit, distinct-colour LUT, calibration of the input
    saveAs("Tiff", output + File.separator + base + ".tif");
    close();
    n = roiManager("count");
    total += n;
    roiManager("Save", output + File.separator + base + "_RoiSet.zip");
    saveAs("Results", output + File.separator + base + "_measurements.csv");
    // the overlay: the image with its contrast stretched for display (pixel values unchanged) and
    // every nucleus outline burnt in
    selectImage(original);
    run("Select None");
    roiManager("deselect");
    run("Enhance Contrast", "saturated=0.35");
    run("From ROI Manager");
    Overlay.useNamesAsLabels(false);
    Overlay.drawLabels(false);
    Overlay.setStrokeColor("yellow");
    run("Flatten");
    saveAs("PNG", output + File.separator + base + "_overlay.png");
    close();
    selectImage(original);
    close();
    roiManager("reset");
    print(name + ": " + n + " objects");
}
setBatchMode(false);
print("total: " + total + " objects in " + files.length + " images");

function requiredArg(text, key) {
    value = call("ij.Macro.getValue", text, key, "");
    if (value == "")
        exit("demo_segment.ijm: missing argument " + key + "=...");
    return value;
}
