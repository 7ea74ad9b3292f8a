// ijtorch example: track a label time-lapse (or a raw movie, dropping "labels") and write TrackMate XML.
// Argument: "movie=<tif> output=<folder> max_distance=<units>"
// The XML opens in Fiji with Plugins > Tracking > Load a TrackMate file.
args = getArgument();
open(parseArg(args, "movie"));
if (nSlices > 1 && Stack.isHyperstack == false) {
    getDimensions(w, h, c, z, t);
    if (t == 1) Stack.setDimensions(c, 1, z);  // a plain stack: slices are frames
}
run("ijtorch Track", "labels max_distance=" + parseArg(args, "max_distance") + " max_gap=2 divisions output=["
    + parseArg(args, "output") + "]");
selectWindow("Track statistics");
print("tracks: " + Table.size);
print("rois: " + roiManager("count"));

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("track_movie.ijm: missing argument " + key + "=...");
}
