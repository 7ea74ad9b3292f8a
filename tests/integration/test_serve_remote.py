"""The Java shim's remote transport: with no Python handler for a command (or for ``Ext.``
functions) and a server configured, the macro call goes to ``ijtorch serve`` and ImageJ ends up
exactly as after the in-process command: every open image pixel for pixel (with its type,
dimensions, LUT, display range and calibration), every ROI (polygon, name, position, colour,
properties), every table row for row, the Log lines and the files written. Bad input gives a macro
error carrying the server's message."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _dialogs import press_ok  # noqa: E402
from _serve_model import CALIBRATION_IMAGE, make_tiny_model  # noqa: E402
from _serve_util import ServerProcess  # noqa: E402

pytestmark = pytest.mark.jvm
pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'ijtorch[serve]')")
pytest.importorskip("uvicorn", reason="the server tests need uvicorn (pip install 'ijtorch[serve]')")

TITLE = "nuclei.tif"
MACRO = f'selectImage("{TITLE}"); run("ijtorch Segment", "model=tiny output=all");'
FAST = dict(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, base_channels=8, device="cpu",
            progress_bar=False)


def _shapes(seed: int, n: int = 8):
    """A YX uint16 image of disks (class ``round``) and squares (``square``), its labels and classes."""
    rng = np.random.default_rng(seed)
    h, w = 64, 32 * (n // 2)
    yy, xx = np.mgrid[:h, :w]
    image = 100 + rng.normal(0, 20, (h, w))
    labels = np.zeros((h, w), np.uint16)
    classes = []
    for i in range(n):
        cy, cx, r = 16 + 32 * (i % 2), 16 + 32 * (i // 2), rng.uniform(6, 9)
        square = i % 3 == 0
        inside = (np.abs(yy - cy) < 0.85 * r) & (np.abs(xx - cx) < 0.85 * r) if square else np.hypot(yy - cy, xx - cx) < r
        labels[inside] = i + 1
        image[inside] += 600
        classes.append("square" if square else "round")
    return image.clip(0, 65535).astype(np.uint16), labels, classes


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    """The calibration image, a model folder (segmentation, classifier, CARE, N2V) and a server on it."""
    import torch

    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.classify import object_crops, train_classifier
    from ijtorch.tasks.restore_train import train_restoration

    image = read_tiff(shared_data / CALIBRATION_IMAGE).data
    folder = tmp_path_factory.mktemp("models")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same in the server: float sums may depend on the thread count
    make_tiny_model(folder, image)
    shapes, labels, classes = _shapes(1)
    train_classifier(object_crops(shapes, "YX", labels, size=24), np.asarray(classes), classes=["round", "square"],
                     output=folder / "shapes", epochs=2, batch_size=8, widths=(8, 16), device="cpu", seed=0,
                     extra_config={"crops": {"size": 24, "scale_by_object": False, "mask_channel": False}})
    clean = image[:96, :128].astype(np.float32)
    noisy = (clean + np.random.default_rng(0).normal(0, 8, clean.shape)).astype(np.float32)
    train_restoration("care", noisy, clean, output=folder / "care", **FAST)
    train_restoration("n2v", noisy, None, output=folder / "n2v", **FAST)
    launcher = (str(Path(__file__).parent / "_serve_local_function.py"),)
    with ServerProcess(folder, "--threads", "1", launcher=launcher) as server:
        yield image, folder, server, noisy
    torch.set_num_threads(before)


@pytest.fixture
def models(setup, monkeypatch):
    monkeypatch.setenv("IJTORCH_MODELS", str(setup[1]))
    return setup[1]


# ----------------------------------------------------------------------------- helpers
@contextmanager
def _remote(server, *commands: str, functions: bool = False):
    """This ImageJ as a Fiji without Python for ``commands`` (and for ``Ext.`` functions)."""
    from jpype import JClass

    from ijtorch.bridge.registry import _handlers, _install, registered_commands

    registry, prefs = JClass("ijtorch.IjtorchRegistry"), JClass("ij.Prefs")
    prefs.set("ijtorch.server", server.url)
    for name in commands:
        registry.unregisterCommand(name)
        assert registry.command(name) is None
    if functions:
        registry.setFunctionHandler(None)
    try:
        yield
    finally:
        for name in commands:
            _install(registered_commands()[name])
        if functions:
            registry.setFunctionHandler(_handlers()[1])
        prefs.set("ijtorch.server", "")


def _show(data, axes, title, **calibration):
    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.image import Calibration

    cal = Calibration(**{"pixel_width": 0.5, "pixel_height": 0.25, "unit": "um", **calibration})
    imp = numpy_to_imageplus(data, axes, title=title, calibration=cal)
    imp.show()
    return imp


def _table(rt):
    headings = [str(h) for h in rt.getHeadings() if str(h) != "Label"]
    return {h: {"text": [str(rt.getStringValue(h, r)) for r in range(int(rt.size()))],
                "values": np.asarray(rt.getColumnAsDoubles(rt.getColumnIndex(h)), dtype=np.float64)}
            for h in headings}


def _snapshot():
    """Every open image, ROI and table of this ImageJ as plain Python values."""
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy

    WM = JClass("ij.WindowManager")
    images = {}
    for image_id in list(WM.getIDList() or []):
        imp = WM.getImage(int(image_id))
        cal = imp.getCalibration()
        luts = imp.getLuts() if imp.isComposite() else [imp.getProcessor().getLut()]
        images[str(imp.getTitle())] = {
            "pixels": imageplus_to_numpy(imp).data, "bit_depth": int(imp.getBitDepth()),
            "dims": (int(imp.getNChannels()), int(imp.getNSlices()), int(imp.getNFrames())),
            "hyperstack": bool(imp.isHyperStack()), "composite": bool(imp.isComposite()),
            "luts": [bytes(lut.getBytes()) for lut in luts],
            "display": (float(imp.getDisplayRangeMin()), float(imp.getDisplayRangeMax())),
            "calibration": (float(cal.pixelWidth), float(cal.pixelHeight), float(cal.pixelDepth), str(cal.getUnit()),
                            float(cal.frameInterval), str(cal.getTimeUnit()))}
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    rois = []
    for roi in (rm.getRoisAsArray() if rm is not None else []):
        poly, colour = roi.getFloatPolygon(), roi.getStrokeColor()
        rois.append((str(roi.getName()), int(roi.getType()), list(poly.xpoints)[:poly.npoints],
                     list(poly.ypoints)[:poly.npoints],
                     (int(roi.getCPosition()), int(roi.getZPosition()), int(roi.getTPosition())),
                     None if colour is None else int(colour.getRGB()), str(roi.getProperty("class"))))
    tables = {}
    for title in list(WM.getNonImageTitles() or []):
        window = WM.getWindow(title)
        rt = window.getResultsTable() if str(title) != "Log" and hasattr(window, "getResultsTable") else None
        if rt is not None:
            tables[str(title)] = _table(rt)
    return {"images": images, "rois": rois, "tables": tables}


def _clean():
    from ijtorch.bridge import run_macro

    run_macro('while (nImages > 0) { selectImage(nImages); close(); } '
              'if (isOpen("ROI Manager")) { roiManager("reset"); } run("Clear Results"); '
              'titles = getList("window.titles"); for (i = 0; i < titles.length; i++) '
              '{ if (titles[i] != "Log" && titles[i] != "ROI Manager") { selectWindow(titles[i]); run("Close"); } }')


def _files(folder: Path, skip=()) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def _local_then_remote(server, command: str, prepare, macro: str, *, files: Path | None = None, skip=()):
    """Run ``macro`` after ``prepare()`` in-process, then remotely; returns both snapshots (with the
    Log lines and the files written into ``files``)."""
    import shutil

    from ijtorch import bridge

    results = []
    for remote in (False, True):
        _clean()
        if files is not None:
            for p in list(files.iterdir()) if files.is_dir() else []:
                if p.name not in skip:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        prepare()
        if remote:
            with _remote(server, command):
                log = bridge.run_macro(macro).log
        else:
            log = bridge.run_macro(macro).log
        snap = _snapshot()
        snap["log"] = log
        if files is not None:
            snap["files"] = _files(files, skip)
        results.append(snap)
    _clean()
    return results


def _assert_same(remote, local):
    assert remote.keys() == local.keys()
    for key in local:
        np.testing.assert_equal(remote[key], local[key], err_msg=key)


def _remote_error(server, command: str, macro: str, pattern: str) -> None:
    from ijtorch import bridge
    from ijtorch.errors import MacroError

    with _remote(server, command), pytest.raises(MacroError, match=pattern):
        bridge.run_macro(macro)


# ----------------------------------------------------------------------------- commands
def test_remote_segment_equals_in_process(ij, setup, models):
    image, _, server, _ = setup
    local, remote = _local_then_remote(server, "ijtorch Segment", lambda: _show(image, "YX", TITLE), MACRO)
    assert len(local["rois"]) > 20 and local["images"][f"{Path(TITLE).stem}-labels"]["bit_depth"] == 16
    assert "area" in local["tables"]["Results"]
    _assert_same(remote, local)
    _show(image, "YX", TITLE)
    _remote_error(server, "ijtorch Segment", f'selectImage("{TITLE}"); run("ijtorch Segment", "model=tiny colour=red");',
                  "HTTP 422.*unknown option")


def test_remote_classify_equals_in_process(ij, setup, models):
    from ijtorch.bridge import add_rois_to_manager
    from ijtorch.tasks.outlines import outlines

    _, _, server, _ = setup
    shapes, labels, classes = _shapes(7)

    def with_rois():
        _show(shapes, "YX", "objects")
        out = outlines(labels, "YX")
        add_rois_to_manager(out, names=[f"{classes[int(k) - 1]}_{int(k):03d}" for k in out.labels], reset=True)

    def with_label_image():
        _show(labels, "YX", "objects-labels")
        _show(shapes, "YX", "objects")

    for prepare, options in ((with_rois, "model=shapes"),
                             (with_label_image, "model=shapes source=[label image] label_image=objects-labels")):
        local, remote = _local_then_remote(server, "ijtorch Classify", prepare,
                                           f'selectImage("objects"); run("ijtorch Classify", "{options}");')
        assert len(local["tables"]["Results"]["class"]["text"]) == len(classes) == len(local["rois"])
        assert {r[6] for r in local["rois"]} <= {"round", "square"} and local["rois"][0][5] is not None
        _assert_same(remote, local)
    _clean()
    with_rois()
    for options, pattern in (("model=nope", "HTTP 404.*'nope' is not registered"),
                             ("model=tiny", "HTTP 422.*is not a classifier"),
                             ("model=shapes source=[label image] label_image=missing",
                              "HTTP 422.*label_image='missing': no open image has that title")):
        _remote_error(server, "ijtorch Classify", f'selectImage("objects"); run("ijtorch Classify", "{options}");',
                      pattern)
    from ijtorch import bridge

    bridge.run_macro('makeLine(1, 1, 30, 30); roiManager("add");')
    _remote_error(server, "ijtorch Classify", 'selectImage("objects"); run("ijtorch Classify", "model=shapes");',
                  r"HTTP 422.*ROI 9 \(.*\) is a Straight Line ROI; only area ROIs")


def test_remote_restore_denoise_and_normalize_equal_in_process(ij, setup, models):
    _, _, server, noisy = setup
    movie = np.stack([np.stack([noisy, noisy[::-1]]), np.stack([noisy[:, ::-1], noisy])])  # T=2, C=2

    def show_movie():
        _show(movie, "TCYX", "movie", frame_interval=2.0)

    runs = [("ijtorch Restore", show_movie, 'run("ijtorch Restore", "model=care channel=2 uncertainty error_map '
                                            'tile_size=64");'),
            ("ijtorch Denoise (Noise2Void)", show_movie,
             'run("ijtorch Denoise (Noise2Void)", "mode=[apply saved model] model=n2v");'),
            ("ijtorch Percentile Normalize", show_movie, 'run("ijtorch Percentile Normalize", "low=2 high=98");')]
    shown = {}
    for command, prepare, macro in runs:
        local, remote = _local_then_remote(server, command, prepare, 'selectImage("movie"); ' + macro)
        shown[command] = local["images"]
        _assert_same(remote, local)
    assert set(shown["ijtorch Restore"]) == {"movie", "movie-restored", "movie-uncertainty", "movie-error map"}
    restored = shown["ijtorch Restore"]["movie-restored"]
    assert restored["bit_depth"] == 32 and restored["dims"] == (1, 1, 2) and restored["calibration"][4] == 2.0
    assert shown["ijtorch Denoise (Noise2Void)"]["movie-n2v"]["dims"] == (1, 1, 2)
    normalized = shown["ijtorch Percentile Normalize"]["movie-normalized"]
    assert normalized["composite"] and normalized["dims"] == (2, 1, 2) and len(normalized["luts"]) == 2
    show_movie()
    for command, options, pattern in (
            ("ijtorch Restore", "model=tiny", "HTTP 422.*model_type"),
            ("ijtorch Restore", "model=[/tmp/care]", "HTTP 422.*no paths"),
            ("ijtorch Denoise (Noise2Void)", "mode=[train on this image]", "HTTP 422.*runs only in-process"),
            ("ijtorch Denoise (Noise2Void)", "mode=[apply saved model]", "HTTP 422.*needs model=")):
        _remote_error(server, command, f'selectImage("movie"); run("{command}", "{options}");', pattern)


def test_remote_track_equals_in_process_and_writes_the_same_files(ij, setup, models, shared_data, tmp_path):
    import tifffile

    from ijtorch.io.tiff import write_imagej_tiff

    _, _, server, _ = setup
    files = sorted((shared_data / "tracking_bacteria" / "01_GT" / "TRA").glob("man_track*.tif"))[:6]
    movie = tmp_path / "movie" / "colony.tif"
    movie.parent.mkdir()
    write_imagej_tiff(movie, np.stack([tifffile.imread(f) for f in files]), "TYX")
    out = tmp_path / "out"
    out.mkdir()

    def open_movie():
        from ijtorch import bridge

        bridge.run_macro(f'open("{movie}");')

    for macro, folder in (('run("ijtorch Track", "labels max_distance=60 divisions");', movie.parent),  # next to it
                          (f'run("ijtorch Track", "labels max_distance=60 max_gap=1 output=[{out}]");', out)):
        local, remote = _local_then_remote(server, "ijtorch Track", open_movie, macro, files=folder,
                                           skip=(movie.name,))
        assert {"colony.xml", "colony_track_statistics.csv"} <= set(local["files"])
        assert any(k.startswith("colony_RES/") for k in local["files"])
        assert "TrackMate XML" in local["log"] and len(local["rois"]) > 10
        # tracks as TrackMate counts them (connected components, divisions included; issue 16 defect 6)
        assert len(local["tables"]["Track statistics"]["track"]["text"]) >= 2
        _assert_same(remote, local)
    _remote_error(server, "ijtorch Track", 'newImage("flat", "8-bit", 32, 32, 1); run("ijtorch Track", "labels");',
                  "HTTP 422.*flat has no time axis")


def test_command_that_needs_python_gives_a_clear_macro_error(ij, setup):
    """Refused from the server's catalog before anything is sent (an installed Fiji lists only the
    server's commands; a macro may still name another)."""
    _, _, server, _ = setup
    _show(setup[0], "YX", TITLE)
    _remote_error(server, "ijtorch Train Segmentation", 'run("ijtorch Train Segmentation", "name=x");',
                  "ijtorch Train Segmentation cannot run on the ijtorch server at http.*: it needs in-process "
                  r"Python \(start Fiji from Python: ijtorch fiji --fiji")


def _dialogs(title: str) -> list:
    from jpype import JClass

    return [w for w in JClass("java.awt.Window").getWindows()
            if isinstance(w, JClass("java.awt.Dialog")) and str(w.getTitle()) == title and w.isVisible()]


def test_menu_refuses_without_an_image_before_any_dialog(ij, setup):
    """From the menu with no image open: an error naming the need, and no dialog to fill in first
    (remote and in-process alike)."""
    import time

    from jpype import JClass

    IJ = JClass("ij.IJ")
    _, _, server, _ = setup
    _clean()
    for remote in (True, False):
        IJ.log("\\Clear")
        with _remote(server, *(["ijtorch Segment"] if remote else [])):
            IJ.doCommand("ijtorch Segment")  # what a menu click does
            deadline = time.time() + 20
            while "needs an open image" not in str(IJ.getLog() or "") and time.time() < deadline:
                time.sleep(0.05)
            assert "ijtorch Segment: ijtorch Segment needs an open image" in str(IJ.getLog() or ""), remote
            assert not _dialogs("ijtorch Segment"), "a dialog opened though the command cannot run"
            for w in _dialogs("ijtorch"):  # the error message box
                w.dispose()


def test_dialog_shows_tuned_values_as_empty_fields_and_records_zero(ij, setup, models):
    """A 0 that means the model's tuned value is an empty field whose help says so; OK records 0."""
    import time

    from jpype import JClass

    from ijtorch import bridge
    from ijtorch.commands.options import dialog_spec
    from ijtorch.commands.segment import SegmentParams

    image, _, server, _ = setup
    _clean()
    _show(image[:64, :64], "YX", "small")
    Recorder = JClass("ij.plugin.frame.Recorder")
    recorder = Recorder(False)
    record_flag = Recorder.class_.getField("record")
    record_flag.setBoolean(None, True)
    try:
        with _remote(server, "ijtorch Segment"):
            JClass("ij.IJ").doCommand("ijtorch Segment")
            deadline = time.time() + 20
            while not any(isinstance(w, JClass("ij.gui.GenericDialog")) for w in _dialogs("ijtorch Segment")) \
                    and time.time() < deadline:
                time.sleep(0.05)
            dialog = next(w for w in _dialogs("ijtorch Segment") if isinstance(w, JClass("ij.gui.GenericDialog")))
            texts = [str(f.getText()) for f in dialog.getStringFields()]
            lines = dialog.getMessage().getClass().getDeclaredField("lines")  # MultiLineLabel has no getter
            lines.setAccessible(True)
            message = "\n".join(str(x) for x in lines.get(dialog.getMessage()))
            dialog.getStringFields().get(0).setText("tiny")  # the model
            press_ok(dialog)
            deadline = time.time() + 60
            while "ijtorch Segment" not in str(recorder.getText()) and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            line = [x for x in str(recorder.getText()).splitlines() if "ijtorch Segment" in x]
    finally:
        record_flag.setBoolean(None, False)
        recorder.close()
    spec = [row.split("\t") for row in dialog_spec(SegmentParams).splitlines()]
    shown = dict(zip([row[1] for row in spec if row[0] in ("number", "string")], texts))
    assert shown["prob_threshold"] == shown["nms_threshold"] == shown["tile_size"] == shown["overlap"] == ""
    assert shown["scale"] == "1.0" and shown["min_confidence"] == "0.0"  # a plain 0 stays a number
    assert "prob_threshold: object probability threshold; empty or 0 = the model's tuned value" in message
    assert len(line) == 1 and "prob_threshold=0 nms_threshold=0" in line[0] and "model=tiny" in line[0], line
    assert bridge.run_macro('return "" + nImages;').value == "2"  # the labels came back
    _clean()


# ----------------------------------------------------------------------------- Ext. functions
FUNCTIONS = ('run("ijtorch Macro Functions"); print(Ext.ijtorchVersion()); print(Ext.ijtorchTorchDevice()); '
             'print(Ext.ijtorchListModels()); print(Ext.ijtorchClassifierClasses("shapes")); '
             f'selectImage("{TITLE}"); run("ijtorch Segment", "model=tiny output=[label map]"); '
             'Ext.ijtorchObjectCount(n); print(n);')


def test_remote_macro_functions_equal_in_process(ij, setup, models):
    from ijtorch import bridge
    from ijtorch.errors import MacroError

    image, _, server, _ = setup
    _show(image, "YX", TITLE)
    local = bridge.run_macro(FUNCTIONS).log.splitlines()
    _clean()
    _show(image, "YX", TITLE)
    with _remote(server, "ijtorch Segment", functions=True):
        remote = bridge.run_macro(FUNCTIONS).log.splitlines()
        for call, pattern in (('Ext.ijtorchClassifierClasses("nope")', "HTTP 404.*'nope' is not registered"),
                              ('Ext.ijtorchClassifierClasses("care")', "HTTP 422.*is not a classifier"),
                              ('Ext.ijtorchClassifierClasses("../care")', "HTTP 422.*no paths"),
                              ('Ext.ijtorchLocalOnly()', "Ext.ijtorchLocalOnly: server .* answered HTTP 404: "
                                                         "Ext.ijtorchLocalOnly cannot run on this server: it needs "
                                                         "in-process Python")):
            with pytest.raises(MacroError, match=pattern):
                bridge.run_macro(f'run("ijtorch Macro Functions"); print({call});')
    assert local[2].split(",").count("shapes") == 1 and local[3] == "round,square" and int(local[4]) > 20
    assert remote == local


# ----------------------------------------------------------------------------- the ImageJ files themselves
def test_tables_and_properties_travel_exactly_through_imagej_readers(ij, tmp_path):
    """What the shim reads with ImageJ's own classes equals what in-process code makes: CSV tables via
    ``ResultsTable.open`` (numeric-looking text, commas, NaN, one column) and Properties texts both ways."""
    from jpype import JClass

    from ijtorch.bridge import results_table
    from ijtorch.serve._imagej import _csv, parse_properties, properties_text

    tables = [{"name": np.array(["12", "a, b", "µm", ""]), "x": np.array([1.5, np.nan, -np.inf, 1e-300]),
               "n": np.arange(4)}, {"only": np.array([0.1, 2.0])}]
    for k, columns in enumerate(tables):
        path = tmp_path / f"t{k}.csv"
        path.write_bytes(_csv(columns))
        remote = _table(JClass("ij.measure.ResultsTable").open(str(path)))
        _assert_same(remote, _table(results_table(columns, title=f"t{k}", show=False)))
    values = {"options": "model=[a b] x=1:2 #!\\", "title": " µ😀\ttab\nline", "key with spaces=": "="}
    props = JClass("java.util.Properties")()
    props.load(JClass("java.io.StringReader")(properties_text(values).decode("ascii")))
    assert {k: str(props.getProperty(k)) for k in values} == values
    out = JClass("java.io.ByteArrayOutputStream")()
    props.store(out, "comment")
    assert parse_properties(bytes(out.toByteArray())) == values
