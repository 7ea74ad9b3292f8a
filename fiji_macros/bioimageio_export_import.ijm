// ijtorch example: the bioimage.io model zoo both ways. 1) export a model as a bioimage.io package
// (format 0.5, TorchScript + state-dict weights; checked with bioimageio.spec and bioimageio.core),
// 2) import the package back under a new name, 3) segment the image with the imported model.
// Argument: "model=<name or folder> output=<package.zip> name=<new model name> image=<tif> test=<true|false>"
args = getArgument();
model = parseArg(args, "model");
output = parseArg(args, "output");
name = parseArg(args, "name");
test = parseArg(args, "test");
if (test == "true") test = " run_test"; else test = "";
run("ijtorch Export bioimage.io Model", "model=[" + model + "] output=[" + output + "] author=[ijtorch example]" + test);
run("ijtorch Import bioimage.io Model", "package=[" + output + "] name=" + name + " overwrite");
open(parseArg(args, "image"));
run("ijtorch Segment", "model=" + name);
print("imported model result: " + getTitle());
close("*");

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("bioimageio_export_import.ijm: missing argument " + key + "=...");
}
