"""Fiji as labs run it on a cluster node (issue 16): no X display and no Xvfb, a headless JVM
(``java.awt.headless=true``); Track in a Python-started Fiji with TrackMate; the installed-Fiji +
server route started as Fiji's own ``--headless -batch`` from a folder that is not Fiji.app."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _fiji_helpers import ROOT, SHARED_DATA, run_in_fiji

pytestmark = [pytest.mark.fiji, pytest.mark.slow]
NAME = "0402a81e75262469"


def _no_display_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY")}
    env["HOME"] = str(tmp_path / "home")
    env["IJTORCH_JAVA_OPTIONS"] = f"-Duser.home={tmp_path / 'home'}"  # Java's preferences stay out of the real home
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def crop(tmp_path):
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    src = SHARED_DATA / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif"
    if not src.is_file():
        pytest.skip(f"shared data missing: {src}")
    return write_imagej_tiff(tmp_path / f"{NAME}.tif", np.ascontiguousarray(read_tiff(src).data[:96, :96]), "YX")


@pytest.fixture
def movie(tmp_path):
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.simulate.movies import simulate_movie

    m = simulate_movie(n_frames=8, shape=(64, 64), n_cells=5, division_prob=0.08, miss_prob=0.0, seed=2)
    return write_imagej_tiff(tmp_path / "movie.tif", m.labels, "TYX")


def _expected_labels(path: Path) -> np.ndarray:
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    image = read_tiff(path)
    return segment(image.data, image.axes, model="nuclei").labels


def _macro_text(crop: Path, movie: Path, out: Path) -> str:
    return (f'open("{crop}");\n'
            'run("ijtorch Segment", "model=nuclei output=all");\n'
            'h = call("java.awt.GraphicsEnvironment.isHeadless");\n'
            'print("headless=" + h + " title=" + getTitle() + " results=" + nResults + " overlay=" + Overlay.size);\n'
            f'saveAs("Tiff", "{out}/labels.tif");\n'
            f'open("{movie}");\n'
            f'run("ijtorch Track", "labels max_distance=8 max_gap=1 divisions output=[{out}]");\n'
            'print("tracks=" + getTitle());\n'
            'newImage("left open", "8-bit ramp", 32, 32, 2, 3, 4);\n')


def test_cli_fiji_headless_runs_without_display_or_xvfb(fiji_path, crop, movie, tmp_path):
    """``ijtorch fiji --headless`` with DISPLAY unset: a headless JVM (no Xvfb), segment and track,
    outputs as files; the run ends though the macro leaves a hyperstack open."""
    out = tmp_path / "out"
    out.mkdir()
    macro = tmp_path / "batch.ijm"
    macro.write_text(_macro_text(crop, movie, out))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ijtorch.cli", "fiji", "--fiji", str(fiji_path), "--headless",
                           "--macro", str(macro)], capture_output=True, text=True, cwd=tmp_path, timeout=400,
                          env=_no_display_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert time.monotonic() - started < 380
    from ijtorch.io.tiff import read_tiff

    expected = _expected_labels(crop)
    n = int(expected.max())
    assert f"headless=true title={NAME}-labels results={n} overlay={n}" in done.stdout, done.stdout
    np.testing.assert_array_equal(read_tiff(out / "labels.tif").data, expected)
    for name in ("movie.xml", "movie_spots.csv", "movie_track_statistics.csv", "movie_tracklet_statistics.csv",
                 "movie-tracks_RoiSet.zip", "Track statistics.csv"):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    assert "InaccessibleObjectException" not in done.stderr
    assert not any((tmp_path / "home").rglob("*ijtorch*"))


def test_installed_fiji_headless_batch_through_the_server(fiji_path, crop, movie, tmp_path):
    """Fiji's own ``--headless -batch`` (net.imagej.Main, java.awt.headless=true, no DISPLAY): the
    installed shim finds ijtorch.properties next to its plugins/ folder though the working directory
    is not the Fiji and there is no -Dplugins.dir; Segment and Track run on the server."""
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from _serve_util import ServerProcess

    from ijtorch.bridge._runtime import ADD_OPENS, fiji_classpath
    from ijtorch.bridge._shim import build_jar
    from ijtorch.io.tiff import read_tiff

    site = tmp_path / "site"  # what install-fiji writes, outside the Fiji: plugins/ijtorch_shim.jar + ijtorch.properties
    (site / "plugins").mkdir(parents=True)
    ij_jar = next((fiji_path / "jars").glob("ij-1*.jar"))
    shim = build_jar(ij_jar, site / "plugins" / "ijtorch_shim.jar")
    out = tmp_path / "out"
    out.mkdir()
    macro = tmp_path / "batch.ijm"
    macro.write_text(_macro_text(crop, movie, out))
    models = tmp_path / "models"
    models.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = _no_display_env(tmp_path)
    with ServerProcess(models, "--threads", "1") as server:
        (site / "ijtorch.properties").write_text(f"server.url={server.url}\n")
        cp = os.pathsep.join([*map(str, fiji_classpath(fiji_path)), str(shim)])
        run = subprocess.run(["java", "-Djava.awt.headless=true", f"-Duser.home={tmp_path / 'home'}", *ADD_OPENS,
                              "-cp", cp, "net.imagej.Main", "--headless", "-batch", str(macro)],
                             capture_output=True, text=True, timeout=400, cwd=work, env=env)
        server_log = server.log_path.read_text()
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    expected = _expected_labels(crop)
    n = int(expected.max())
    # as in-process headless: the labels current (not displayed), ROIs on its overlay, the Results table
    assert f"headless=true title={NAME}-labels results={n} overlay={n}" in run.stdout, \
        run.stdout[-2000:] + run.stderr[-3000:]
    assert "HeadlessException" not in run.stdout + run.stderr
    np.testing.assert_array_equal(read_tiff(out / "labels.tif").data, expected)
    # Track writes files: its ROIs as <title>_RoiSet.zip and its tables as CSV there, as in-process
    for name in ("movie.xml", "movie_spots.csv", "movie_track_statistics.csv", "movie_tracklet_statistics.csv",
                 "movie-tracks_RoiSet.zip", "Track statistics.csv"):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    from ijtorch.io.roiset import read_roiset

    assert len(read_roiset(out / "movie-tracks_RoiSet.zip").names) > 0
    assert "h2c" not in server_log.lower() and "Unsupported upgrade" not in server_log


def test_track_opens_trackmate_in_a_python_started_fiji(fiji_path, movie, tmp_path):
    """TrackMate's DisplaySettingsIO (gson on java.awt.Font) needs the packages Fiji's launcher
    opens; the process ends once the run is done though TrackMate's window is open."""
    out = run_in_fiji(f"""
        from ijtorch import bridge
        from jpype import JClass
        bridge.fiji_gateway()
        bridge.run_macro('open("{movie}"); run("ijtorch Track", "labels max_distance=8 max_gap=1 divisions");')
        frames = [str(f.getTitle()) for f in JClass("java.awt.Frame").getFrames() if f.isVisible()]
        report(frames=frames, log=bridge.run_macro('return getInfo("log");').value)
        from ijtorch.bridge._batch import end_batch
        end_batch(0)
    """, tmp_path, env={"IJTORCH_JAVA_OPTIONS": f"-Duser.home={tmp_path}", "HOME": str(tmp_path)})
    assert any(f.startswith("TrackMate on movie") for f in out["frames"]), out
    assert "tracks (" in out["log"] and "CTC tracklets" in out["log"]
