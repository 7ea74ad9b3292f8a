// ijtorch example: restoration. 1) Noise2Void trained on the noisy image itself (kept as a model),
// 2) CARE trained on a noisy/clean pair, 3) each saved model applied with ijtorch Restore,
// 4) an artificial-labelling model (input channel -> target channel) applied with ijtorch Artificial Labelling.
// Argument: "noisy=<tif> clean=<tif> epochs=<n> steps=<n>"  (same-size single-channel images)
args = getArgument();
epochs = parseArg(args, "epochs");
steps = parseArg(args, "steps");
open(parseArg(args, "noisy"));
noisy = getTitle();
run("ijtorch Denoise (Noise2Void)", "mode=[train on this image] epochs=" + epochs + " steps=" + steps + " save_as=example-n2v");
print("n2v result: " + getTitle());
open(parseArg(args, "clean"));
clean = getTitle();
run("ijtorch Train Restoration", "kind=care source=[open images] input=[" + noisy + "] target=[" + clean
    + "] name=example-care epochs=" + epochs + " steps=" + steps + " patch_size=32");
run("ijtorch Train Restoration", "kind=[artificial labelling] source=[open images] input=[" + noisy + "] target=["
    + clean + "] name=example-label epochs=" + epochs + " steps=" + steps + " patch_size=32");
models = newArray("example-n2v", "example-care");
for (i = 0; i < models.length; i++) {
    selectImage(noisy);
    run("ijtorch Restore", "model=" + models[i] + " tile_size=64");
    print(models[i] + " result: " + getTitle() + " (" + bitDepth() + "-bit)");
}
selectImage(noisy);
run("ijtorch Artificial Labelling", "model=example-label tile_size=64");
print("example-label result: " + getTitle() + " (" + bitDepth() + "-bit)");
close("*");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("restore_and_denoise.ijm: missing argument " + key + "=...");
}
