// ijtorch foundation example: a Python-backed command and an Ext. macro function.
// Run headless with:  ijtorch macro fiji_macros/normalize_and_version.ijm
setBatchMode(true);
newImage("ramp", "16-bit ramp", 256, 128, 1);
run("ijtorch Percentile Normalize", "low=1 high=99.8 clip");
title = getTitle();
getStatistics(area, mean, min, max);
print("image: " + title + " (" + bitDepth() + "-bit)");
print("min=" + d2s(min, 4) + " max=" + d2s(max, 4) + " mean=" + d2s(mean, 4));
run("ijtorch Macro Functions");
print("ijtorch " + Ext.ijtorchVersion() + " on " + Ext.ijtorchTorchDevice());
