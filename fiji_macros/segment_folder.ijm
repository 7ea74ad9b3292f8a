// ijtorch example: segment every .tif of a folder (batch mode) and save label maps, RoiSets and measurements.
// Argument: "input=<folder> output=<folder> model=<name or folder> [scale=2] [tta=true]"  (no spaces in the values)
//   scale: resize before the model (2 when the nuclei are half the size the model was trained on)
//   tta=true: average the model over 8 flips/rotations (8x slower, slightly more accurate)
// In Fiji: Plugins > Macros > Run... after installing ijtorch (ijtorch install-fiji), or ijtorch macro FILE --arg ...
args = getArgument();
input = parseArg(args, "input");
output = parseArg(args, "output");
model = parseArg(args, "model");
scale = parseOptional(args, "scale", "1");
tta = parseOptional(args, "tta", "false");
options = "model=[" + model + "] scale=" + scale + " output=all";
if (tta == "true") options = options + " test_time_augmentation";
setBatchMode(true);
File.makeDirectory(output);
files = getFileList(input);
count = 0;
for (i = 0; i < files.length; i++) {
    if (!endsWith(toLowerCase(files[i]), ".tif")) continue;
    base = File.getNameWithoutExtension(files[i]);
    open(input + File.separator + files[i]);
    original = getImageID();
    run("ijtorch Segment", options);
    saveAs("Tiff", output + File.separator + base + ".tif");
    close();
    n = roiManager("count");
    if (n > 0) roiManager("Save", output + File.separator + base + "_RoiSet.zip");
    saveAs("Results", output + File.separator + base + "_measurements.csv");
    roiManager("reset");
    selectImage(original);
    close();
    print(files[i] + ": " + n + " objects");
    count++;
}
print(count + " image(s) segmented into " + output);

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("segment_folder.ijm: missing argument " + key + "=...");
}

function parseOptional(text, key, fallback) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    return fallback;
}
