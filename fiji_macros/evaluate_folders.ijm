// ijtorch example: compare a folder of predicted label maps with a ground-truth folder (same file names).
// Argument: "prediction=<folder> ground_truth=<folder>"; prints F1 and AP at IoU 0.5 per image.
args = getArgument();
run("ijtorch Evaluate", "prediction=[" + parseArg(args, "prediction") + "] ground_truth=[" + parseArg(args, "ground_truth") + "]");
selectWindow("Evaluation");
for (i = 0; i < Table.size; i++)
    print(Table.getString("name", i) + "\tF1=" + d2s(Table.get("f1", i), 4) + "\tAP50=" + d2s(Table.get("ap@0.50", i), 4));

function parseArg(text, key) {
    parts = split(text, " ");
    for (k = 0; k < parts.length; k++)
        if (startsWith(parts[k], key + "=")) return substring(parts[k], lengthOf(key) + 1);
    exit("evaluate_folders.ijm: missing argument " + key + "=...");
}
