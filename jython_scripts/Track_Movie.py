#@ File (label="Time-lapse (frames on the T axis)") movie
#@ File (label="Output folder", style="directory") output_dir
#@ Boolean (label="The movie holds label masks", value=false) is_labels
#@ String (label="Segmentation model", value="nuclei") model
#@ Float (label="Largest displacement per frame", value=15.0) max_distance
#@ Integer (label="Largest gap (frames)", value=2) max_gap
#@ Boolean (label="Detect divisions", value=false) divisions
#@output String trackmate_xml
# ijtorch: track a movie and write TrackMate XML (open it with Plugins > Tracking > Load a TrackMate file),
# TrackMate CSVs, a CTC result and GEFF into the output folder.
import os
from ij import IJ

imp = IJ.openImage(movie.getAbsolutePath())
if imp is None:
    raise ValueError("could not open " + movie.getAbsolutePath())
if imp.getNFrames() == 1 and imp.getNSlices() > 1:
    # a plain stack: its slices are the frames
    imp.setDimensions(imp.getNChannels(), 1, imp.getNSlices())
out = output_dir.getAbsolutePath()
if not os.path.isdir(out):
    os.makedirs(out)
options = "model=[%s] max_distance=%s max_gap=%d output=[%s]" % (model, max_distance, max_gap, out)
if is_labels:
    options += " labels"
if divisions:
    options += " divisions"
IJ.run(imp, "ijtorch Track", options)
trackmate_xml = os.path.join(out, os.path.splitext(imp.getTitle())[0] + ".xml")
if not os.path.isfile(trackmate_xml):
    raise RuntimeError("ijtorch Track wrote no TrackMate XML at " + trackmate_xml)
IJ.log("TrackMate XML: " + trackmate_xml)
