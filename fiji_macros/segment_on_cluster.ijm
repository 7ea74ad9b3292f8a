// ijtorch example: segment a whole folder of images (TIFF, PNG, ...), or one image larger than memory, on a Dask cluster.
// Argument: "input=<folder, big TIFF or OME-Zarr> output=<folder> [model=nuclei] [workers=0] [scheduler=tcp://host:8786]"
//   (no spaces in the values)
//   workers=0: a local cluster with one worker process per CPU core; scheduler: an existing Dask scheduler
//   (empty: $IJTORCH_DASK_SCHEDULER, else a local cluster). A folder runs one task per image and a rerun
//   skips what is done; a big image is segmented block by block into an OME-Zarr label image.
// Progress shows in ImageJ's status bar; Esc cancels the tasks not yet started.
args = getArgument();
input = parseArg(args, "input");
output = parseArg(args, "output");
options = "input=[" + input + "] output=[" + output + "] model=[" + parseOptional(args, "model", "nuclei") + "]"
    + " workers=" + parseOptional(args, "workers", "0");
scheduler = parseOptional(args, "scheduler", "");
if (scheduler != "") options = options + " scheduler=[" + scheduler + "]";
run("ijtorch Segment on Cluster", options);
print("segmented on the cluster into " + output);

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("segment_on_cluster.ijm: missing argument " + key + "=...");
}

function parseOptional(text, key, fallback) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    return fallback;
}
