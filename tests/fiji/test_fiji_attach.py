"""ijtorch in a real Fiji (IJTORCH_FIJI): gateway from Python, attach to a foreign gateway with the
shim injected, commands from IJ1 macros and ImageJ2 scripts, Dataset conversion, TrackMate reading
our XML and our in-memory model, RoiSets in Fiji's ROI Manager, install-fiji on the real tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _fiji_helpers import ROOT, SHARED_DATA, run_in_fiji

pytestmark = [pytest.mark.fiji, pytest.mark.slow]
NAME = "0402a81e75262469"


@pytest.fixture
def crop(tmp_path):
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    src = SHARED_DATA / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif"
    if not src.is_file():
        pytest.skip(f"shared data missing: {src}")
    folder = tmp_path / "images"
    folder.mkdir()
    return write_imagej_tiff(folder / f"{NAME}.tif", np.ascontiguousarray(read_tiff(src).data[:96, :96]), "YX")


def _expected(path: Path, model: str) -> np.ndarray:
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    image = read_tiff(path)
    return segment(image.data, image.axes, model=model).labels


def test_gateway_runs_segment_from_ij1_macro_and_imagej2_scripts(fiji_path, crop, segmentation_model, tmp_path):
    from ijtorch.io.tiff import read_tiff

    ijm = tmp_path / "seg.ijm"
    ijm.write_text(f'#@ String model\nopen("{crop}");\nrun("ijtorch Segment", "model=[" + model + "] output=[label map]");\n'
                   f'saveAs("Tiff", "{tmp_path}/from_ij2_ijm.tif");\nclose("*");\n')
    py = tmp_path / "seg.py"
    py.write_text(f'#@ String model\n#@output Integer n\nfrom ij import IJ, WindowManager\nimp = IJ.openImage("{crop}")\n'
                  'IJ.run(imp, "ijtorch Segment", "model=[%s] output=[label map]" % model)\n'
                  f'labels = WindowManager.getImage("{NAME}-labels")\n'
                  f'IJ.saveAs(labels, "Tiff", "{tmp_path}/from_ij2_py.tif")\nn = int(labels.getStatistics().max)\n'
                  'labels.close()\n')
    out = run_in_fiji(f"""
        from ijtorch import bridge
        from jpype import JClass
        ij = bridge.fiji_gateway()
        log = bridge.run_macro('open("{crop}"); run("ijtorch Segment", "model={segmentation_model} output=[label map]"); '
                               'saveAs("Tiff", "{tmp_path}/from_ij1.tif"); print(getTitle()); close("*");').log
        from ijtorch.cli.fiji import _run_fiji_script
        from pathlib import Path
        ijm_out = _run_fiji_script(ij, Path("{ijm}"), ["model={segmentation_model}"])
        py_out = _run_fiji_script(ij, Path("{py}"), ["model={segmentation_model}"])
        report(version=str(ij.getVersion()), ij1=str(JClass("ij.IJ").getFullVersion()), log=log, py_out=py_out,
               headless=bool(JClass("java.awt.GraphicsEnvironment").isHeadless()))
    """, tmp_path, env={"IJTORCH_MODELS": __import__("os").environ.get("IJTORCH_MODELS", "")})
    assert out["version"].startswith("2.14") and out["ij1"].startswith("1.54")
    assert out["log"] == "from_ij1.tif"  # saveAs renames the label image
    expected = _expected(crop, segmentation_model)
    for name in ("from_ij1", "from_ij2_ijm", "from_ij2_py"):
        np.testing.assert_array_equal(read_tiff(tmp_path / f"{name}.tif").data, expected, err_msg=name)
    assert int(out["py_out"]["n"]) == int(expected.max())


def test_attach_injects_the_shim_into_a_foreign_gateway(fiji_path, crop, segmentation_model, tmp_path):
    """A JVM started without the shim (as pyimagej starts one): attach() defines the shim in
    ImageJ's class loader, and IJ1 macros then run ijtorch commands headless."""
    out = run_in_fiji(f"""
        import pathlib, jpype
        root = pathlib.Path("{fiji_path}")
        jars = [str(p) for s in ("jars", "plugins") for p in (root / s).rglob("*.jar") if "win64" not in p.parts]
        jpype.startJVM("-Djava.awt.headless=true", "--add-opens=java.base/java.lang=ALL-UNNAMED", *JAVA_OPTIONS, classpath=jars)
        jpype.JClass("net.imagej.patcher.LegacyInjector").preinit()
        gateway = jpype.JClass("net.imagej.ImageJ")()
        IJ = jpype.JClass("ij.IJ")
        try:
            IJ.getClassLoader().loadClass("ijtorch.IjtorchRegistry"); before = True
        except Exception:
            before = False
        import ijtorch
        assert ijtorch.attach(gateway) is gateway
        loader = str(jpype.JClass("ijtorch.IjtorchRegistry").class_.getClassLoader())
        from ijtorch import bridge
        # headless, IJ.log goes to stdout (no Log window): the macro returns its findings instead
        log = bridge.run_macro('open("{crop}"); run("ijtorch Segment", "model={segmentation_model} output=[label map]"); '
                               's = getTitle(); getStatistics(a, mean, min, max); s = s + "|" + max; '
                               'run("ijtorch Macro Functions"); s = s + "|" + Ext.ijtorchVersion(); close("*"); '
                               'return s;').value
        # Dataset in -> numpy with axes -> Dataset out, in the gateway's context
        import numpy as np
        from ijtorch.bridge import to_image, like_input
        ds = gateway.io().open("{crop}")
        image = to_image(ds)
        back = like_input(image.data[::-1].copy(), image.axes, ds, name="flipped")
        again = to_image(back)
        report(before=before, loader=loader, log=log.split("|"), axes=image.axes, shape=list(image.data.shape),
               back_class=str(back.getClass().getName()), same=bool((again.data == image.data[::-1]).all()),
               again_axes=again.axes)
    """, tmp_path, env={"DISPLAY": ""})
    assert out["before"] is False and "AppClassLoader" in out["loader"]
    expected = _expected(crop, segmentation_model)
    assert out["log"] == [f"{NAME}-labels", str(int(expected.max())), "0.1.0"]
    assert out["axes"] == "YX" and out["shape"] == [96, 96]
    assert out["back_class"] == "net.imagej.DefaultDataset" and out["same"] and out["again_axes"] == "YX"


def test_trackmate_reads_our_xml_and_our_in_memory_model_matches(fiji_path, tmp_path):
    out = run_in_fiji(f"""
        from ijtorch import bridge
        from ijtorch.io.trackmate import write_trackmate_xml
        from ijtorch.simulate.movies import simulate_movie
        from ijtorch.tasks.linking import track_labels
        from ijtorch.bridge._trackmate import build_trackmate_model, trackmate_available
        from jpype import JClass
        bridge.start()
        m = simulate_movie(n_frames=12, shape=(80, 80), n_cells=8, division_prob=0.05, miss_prob=0.0, seed=4)
        tr = track_labels(m.labels, "TYX", intensity=m.image, params={{"max_distance": 8}})
        path = write_trackmate_xml("{tmp_path}/tracks.xml", tr)
        reader = JClass("fiji.plugin.trackmate.io.TmXmlReader")(JClass("java.io.File")(str(path)))
        xml_model = reader.getModel()
        mem = build_trackmate_model(tr)
        def counts(model):
            return [int(model.getSpots().getNSpots(False)), int(model.getSpots().getNSpots(True)),
                    int(model.getTrackModel().nTracks(False)), int(model.getTrackModel().nTracks(True)),
                    int(model.getTrackModel().edgeSet().size())]
        report(available=trackmate_available(), xml=counts(xml_model), mem=counts(mem), ok=bool(reader.isReadingOk()),
               error=str(reader.getErrorMessage()),
               ours=[len(tr.spots["id"]), len(tr.spots["id"]), len(tr.track_ids), len(tr.track_ids), len(tr.edges)])
    """, tmp_path)
    assert out["available"] and out["ok"] and out["error"] == ""
    assert out["xml"] == out["ours"] == out["mem"]


def test_roiset_reopens_in_fiji_roi_manager(fiji_path, tmp_path):
    from ijtorch.io.roiset import write_roiset
    from ijtorch.tasks.outlines import outlines
    from ijtorch.simulate.movies import simulate_movie

    labels = simulate_movie(n_frames=1, shape=(64, 64), n_cells=5, seed=1).labels[0]
    ol = outlines(labels)
    names = [f"cell_{int(v):03d}" for v in ol.labels]
    path = write_roiset(tmp_path / "RoiSet.zip", ol.polygons, names=names)
    out = run_in_fiji(f"""
        from ijtorch import bridge
        from jpype import JClass
        bridge.start()
        rm = JClass("ij.plugin.frame.RoiManager").getRoiManager()
        rm.reset()
        rm.runCommand("Open", "{path}")
        rois = rm.getRoisAsArray()
        report(names=[str(r.getName()) for r in rois],
               polys=[[[float(x) for x in r.getFloatPolygon().xpoints], [float(y) for y in r.getFloatPolygon().ypoints]]
                      for r in rois])
    """, tmp_path)
    assert out["names"] == names
    for poly, (xs, ys) in zip(ol.polygons, out["polys"]):
        np.testing.assert_allclose(np.c_[xs, ys], poly, atol=1e-4)


def test_install_fiji_into_the_real_fiji_then_uninstall_restores_it(fiji_path, segmentation_model, crop, tmp_path):
    """Installed shim on Fiji's own class path (as its launcher builds it): attach() uses it as is,
    the installed Jython script runs through ImageJ2's ScriptService; --uninstall leaves the tree as before."""
    import subprocess
    import sys

    def tree():
        return sorted(str(p.relative_to(fiji_path)) for p in fiji_path.rglob("*"))

    before = tree()
    cli = [sys.executable, "-m", "ijtorch.cli", "install-fiji", str(fiji_path), "--server", "http://127.0.0.1:8765"]
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    try:
        assert "server.url=http://127.0.0.1:8765" in (fiji_path / "ijtorch.properties").read_text()
        out = run_in_fiji(f"""
            import pathlib, jpype
            root = pathlib.Path("{fiji_path}")
            jars = [str(p) for s in ("jars", "plugins") for p in (root / s).rglob("*.jar") if "win64" not in p.parts]
            from ijtorch.bridge._runtime import fiji_classpath
            jars = [str(p) for p in fiji_classpath(root)] + [str(root / "plugins" / "ijtorch_shim.jar")]
            jpype.startJVM("-Djava.awt.headless=true", "--add-opens=java.base/java.lang=ALL-UNNAMED", *JAVA_OPTIONS, classpath=jars)
            jpype.JClass("net.imagej.patcher.LegacyInjector").preinit()
            gateway = jpype.JClass("net.imagej.ImageJ")()
            import ijtorch
            ijtorch.attach(gateway)
            source = str(jpype.JClass("ijtorch.IjtorchRegistry").class_.getProtectionDomain().getCodeSource().getLocation())
            from ijtorch.cli.fiji import _run_fiji_script
            outputs = _run_fiji_script(gateway, root / "scripts/Plugins/ijtorch/Segment_Folder.py",
                                       ["input_dir={crop.parent}", "output_dir={tmp_path / 'out'}",
                                        "model={segmentation_model}", "extension=.tif", "save_rois=true"])
            report(source=source, summary=outputs.get("summary"))
        """, tmp_path, env={"DISPLAY": ""})
        assert out["source"].endswith("plugins/ijtorch_shim.jar")
        n = int(_expected(crop, segmentation_model).max())
        assert out["summary"] == f"{NAME}.tif: {n} objects"
        # headless (no ROI Manager, no windows): the ROIs from the labels' overlay, the measurements table
        from ijtorch.io.roiset import read_roiset

        assert len(read_roiset(tmp_path / "out" / f"{NAME}_RoiSet.zip").names) == n
        assert len((tmp_path / "out" / f"{NAME}_measurements.csv").read_text().splitlines()) == n + 1
    finally:
        undo = subprocess.run([*cli[:4], str(fiji_path), "--uninstall"], capture_output=True, text=True, cwd=ROOT)
        assert undo.returncode == 0, undo.stderr
    assert tree() == before


def test_cli_fiji_headless_runs_a_macro_and_a_script(fiji_path, tmp_path):
    import subprocess
    import sys

    macro = tmp_path / "m.ijm"
    macro.write_text('newImage("ramp", "16-bit ramp", 64, 32, 1); run("ijtorch Percentile Normalize", "low=1 high=99");'
                     'print(getTitle() + " " + bitDepth());')
    script = tmp_path / "s.py"
    script.write_text("#@ String who\n#@output String greeting\nfrom ij import IJ\ngreeting = 'hello ' + who + ' from ' + IJ.getFullVersion()\n")
    cli = [sys.executable, "-m", "ijtorch.cli", "fiji", "--fiji", str(fiji_path), "--headless"]
    done = subprocess.run([*cli, "--macro", str(macro)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "ramp-normalized 32" in done.stdout, done.stdout + done.stderr[-2000:]
    done = subprocess.run([*cli, "--script", str(script), "--arg", "who=tests"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "greeting=hello tests from 1.54" in done.stdout, done.stdout + done.stderr[-2000:]
    bad = tmp_path / "bad.py"  # SciJava only logs a failing script's exception: the CLI reports it and fails
    bad.write_text("#@ String who\n#@output String greeting\nraise ValueError('no greeting for ' + who)\n")
    done = subprocess.run([*cli, "--script", str(bad), "--arg", "who=tests"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 2 and "bad.py failed: ValueError: no greeting for tests" in done.stderr, done.stderr[-2000:]
    done = subprocess.run([*cli[:4], "--fiji", str(tmp_path), "--headless"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "is not a Fiji.app folder" in done.stderr
