// ijtorch demo: segment nuclei with the bundled star-convex model and save what a person looks at.
// Argument: "input=<folder> output=<folder> files=<a.tif,b.tif,...>"  (make demo passes it)
// Works the same in Fiji with ijtorch installed (Plugins > ijtorch > ijtorch Segment).
args = getArgument();
input = parseArg(args, "input");
output = parseArg(args, "output");
files = split(parseArg(args, "files"), ",");
File.makeDirectory(output);
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
    selectImage(original);
    roiManager("Show All without labels");
    run("Flatten");
    saveAs("PNG", output + File.separator + base + "_overlay.png");
    close();
    selectImage(original);
    close();
    roiManager("reset");
    print(name + ": " + n + " objects");
}
print("total: " + total + " objects in " + files.length + " images");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++) {
        if (startsWith(parts[k], key + "="))
            return substring(parts[k], lengthOf(key) + 1);
    }
    exit("demo_segment.ijm: missing argument " + key + "=...");
}
