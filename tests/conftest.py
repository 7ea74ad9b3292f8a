"""Shared fixtures. JVM tests (marker ``jvm``) share one embedded ImageJ per pytest process.

The suite never touches the user's home: at import (before any test, before any JVM starts, and
inherited by every subprocess) this module points ``HOME``, the XDG folders, ``IJTORCH_MODELS``,
``IJTORCH_CACHE`` and Java's ``user.home`` (which Java takes from the password database, not from
``$HOME``: ``IJTORCH_JAVA_OPTIONS`` for the embedded JVM, ``JDK_JAVA_OPTIONS`` for a plain ``java``)
at a private temporary folder, snapshots the real user paths (model folder, ImageJ preferences,
Java's per-user files, ijtorch's cache) and fails the session when they changed by its end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import site
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IJTORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------- a private home for the suite
def _real_homes() -> list[Path]:
    """The user's home as Python sees it ($HOME) and as Java sees it (the password database)."""
    homes = [Path(os.path.expanduser("~"))]
    try:
        homes.append(Path(pwd.getpwuid(os.getuid()).pw_dir))
    except (KeyError, OSError):
        pass
    return list(dict.fromkeys(h.resolve() for h in homes if str(h) not in ("", "/")))


def _watched_paths(homes: list[Path]) -> list[Path]:
    """The real user paths ijtorch, ImageJ and Java write to when nothing redirects them."""
    models = os.environ.get("IJTORCH_MODELS")
    cache = os.environ.get("IJTORCH_CACHE")
    paths = [Path(models).expanduser()] if models else []
    paths += [Path(cache).expanduser()] if cache else []
    for h in homes:
        paths += [h / ".local" / "share" / "ijtorch", h / ".cache" / "ijtorch", h / ".config" / "ijtorch",
                  h / ".ijtorch", h / ".imagej", h / "Library" / "Preferences" / "IJ_Prefs.txt", h / ".java"]
    return list(dict.fromkeys(paths))


def _snapshot(paths: list[Path], homes: list[Path]) -> dict[str, tuple]:
    """Every file and folder under ``paths`` with size and mtime, and the names directly in each home."""
    snap: dict[str, tuple] = {}
    for root in paths:
        if not root.exists():
            continue
        for p in [root, *(root.rglob("*") if root.is_dir() else [])]:
            try:
                st = p.lstat()
            except OSError:
                continue
            snap[str(p)] = ("dir" if p.is_dir() else st.st_size, st.st_mtime_ns)
    for h in homes:
        try:
            snap.update({f"{h}/{name} (new in home)": ("exists",) for name in os.listdir(h)})
        except OSError:
            pass
    return snap


def home_changes() -> list[str]:
    """What changed in the real user paths since this test session started (empty when nothing)."""
    if _REAL is None:
        return []
    paths, homes, before = _REAL
    after = _snapshot(paths, homes)
    changes = [f"created {k}" for k in sorted(after.keys() - before.keys())]
    changes += [f"removed {k}" for k in sorted(before.keys() - after.keys()) if not k.endswith("(new in home)")]
    changes += [f"modified {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return changes


def _isolate() -> tuple[Path | None, tuple | None]:
    """Redirect every user path into a new temporary folder; return it and the real paths' snapshot.
    A pytest started inside the suite (already isolated) keeps its parent's private folder."""
    if os.environ.get("IJTORCH_TEST_PRIVATE_ROOT"):
        return None, None
    homes = _real_homes()
    paths = _watched_paths(homes)
    before = _snapshot(paths, homes)
    real_cache = Path(os.environ.get("IJTORCH_CACHE") or homes[0] / ".cache" / "ijtorch")
    user_base = site.getuserbase()  # before HOME moves: pip --user installs stay importable
    private = Path(tempfile.mkdtemp(prefix="ijtorch-tests-"))
    home = private / "home"
    for sub in ("home/.config", "home/.cache", "home/.local/share", "home/.local/state", "models", "cache"):
        (private / sub).mkdir(parents=True)
    # the shim jar is compiled once per source hash; reusing the user's copy saves a javac run (read only)
    for jar in real_cache.glob("ijtorch-shim-*.jar") if real_cache.is_dir() else ():
        shutil.copy2(jar, private / "cache" / jar.name)
    user_home = f"-Duser.home={home}"
    os.environ.update({
        "IJTORCH_TEST_PRIVATE_ROOT": str(private),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "PYTHONUSERBASE": os.environ.get("PYTHONUSERBASE") or user_base,
        "IJTORCH_MODELS": str(private / "models"),
        "IJTORCH_CACHE": str(private / "cache"),
        "IJTORCH_JAVA_OPTIONS": f"{os.environ.get('IJTORCH_JAVA_OPTIONS', '')} {user_home}".strip(),
        "JDK_JAVA_OPTIONS": f"{os.environ.get('JDK_JAVA_OPTIONS', '')} {user_home}".strip(),
    })
    if (homes[0] / ".pyenv").is_dir():
        os.environ.setdefault("PYENV_ROOT", str(homes[0] / ".pyenv"))  # pyenv shims find their root without HOME
    return private, (paths, homes, before)


PRIVATE_ROOT, _REAL = _isolate()
#: The user paths the suite must leave alone (checked at the end of the session).
REAL_HOMES: list[Path] = _REAL[1] if _REAL else []


@pytest.fixture(scope="session", autouse=True)
def private_home() -> Path:
    """The suite's private folder (``home/``, ``models/``, ``cache/``); the environment points at it
    from conftest import on, so every test and subprocess sees it."""
    return Path(os.environ["IJTORCH_TEST_PRIVATE_ROOT"])


@pytest.fixture(scope="session")
def real_home_changes():
    """``real_home_changes()`` lists what changed in the real user paths since the session started."""
    return home_changes


def pytest_collection_modifyitems(session, config, items):
    """The home check runs last (it checks what every test before it did)."""
    last = [i for i in items if i.name == "test_the_real_home_is_unchanged_by_the_suite"]
    items[:] = [i for i in items if i not in last] + last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """For a JVM test, print the JVM's threads a minute before pytest-timeout ends a hung run: the
    Python stacks it prints show only where Python waits for Java (an AWT deadlock shows up in Java)."""
    timeout = _timeout_seconds(item.config)
    timer = None
    if timeout and item.get_closest_marker("jvm") is not None:
        timer = threading.Timer(max(timeout - 60, timeout / 2), _print_java_threads, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def _timeout_seconds(config) -> float:
    try:
        return float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    except (ValueError, TypeError):  # pytest-timeout not installed: no "timeout" ini option
        return 0.0


def _print_java_threads(nodeid: str) -> None:
    """``jcmd <pid> Thread.print`` of this process (the embedded JVM lives in it) to stderr."""
    import subprocess
    import sys

    jcmd = shutil.which("jcmd")
    text = f"\n{nodeid} is still running near its timeout; the JVM's threads:\n"
    try:
        out = subprocess.run([jcmd, str(os.getpid()), "Thread.print"], capture_output=True, text=True,
                             timeout=30) if jcmd else None
        text += out.stdout + out.stderr if out else "(no jcmd on PATH)"
    except (OSError, subprocess.SubprocessError) as e:
        text += f"(jcmd failed: {e})"
    sys.__stderr__.write(text + "\n")
    sys.__stderr__.flush()


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when a test wrote into the real home; then remove the private folder."""
    if _REAL is None:
        return
    changes = home_changes()
    if changes:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        text = ("the test session changed the user's real home / model folder (tests must write only under "
                "$IJTORCH_TEST_PRIVATE_ROOT; a process outside the session writing there meanwhile would also show "
                "here):\n  " + "\n  ".join(changes[:50]))
        if tr is not None:
            tr.write_line("")
            tr.write_line(text, red=True, bold=True)
        else:
            print(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if PRIVATE_ROOT is not None and not os.environ.get("IJTORCH_KEEP_TEST_HOME"):
        shutil.rmtree(PRIVATE_ROOT, ignore_errors=True)


@pytest.fixture(scope="session")
def ij():
    """The running embedded ImageJ (started once per process)."""
    from ijtorch import bridge

    return bridge.start()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set IJTORCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    much faster than two on a shared, oversubscribed CPU, and deterministic."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _close_imagej_windows(request):
    """JVM tests start from a clean ImageJ: no open images, empty ROI Manager, empty results."""
    yield
    from ijtorch import bridge

    if "jvm" in request.keywords and bridge.is_started():
        from ijtorch.bridge import run_macro

        run_macro('while (nImages > 0) { selectImage(nImages); close(); } '
                  'if (isOpen("ROI Manager")) { roiManager("reset"); } run("Clear Results");')


@pytest.fixture(scope="session")
def segmentation_model(tmp_path_factory) -> str:
    """A model name ``ijtorch Segment`` can load: the bundled ``nuclei`` when present, otherwise a
    tiny StarDist trained here in ~15 s (2 steps on 3 shared nuclei images; plumbing tests only,
    its segmentations are meaningless). Sets ``IJTORCH_MODELS`` for the session and subprocesses."""
    from ijtorch.models.store import list_models

    if any(m["name"] == "nuclei" for m in list_models()):
        return "nuclei"
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import train_segmentation

    data = SHARED_DATA / "nuclei_dsb2018" / "train"
    if not data.is_dir():
        pytest.skip(f"no bundled nuclei model and no shared data at {data} to train a stand-in")
    models = tmp_path_factory.mktemp("models")
    os.environ["IJTORCH_MODELS"] = str(models)
    names = sorted(p.name for p in (data / "images").iterdir())[:3]
    images = [read_tiff(data / "images" / n).data for n in names]
    labels = [read_tiff(data / "labels" / n).data for n in names]
    train_segmentation(images, labels, output=models / "tiny", epochs=1, steps_per_epoch=2, patch_size=64,
                       batch_size=2, val_fraction=0.0, device="cpu", seed=0)
    return "tiny"


@pytest.fixture(scope="session")
def bacteria():
    """The shared bacteria movie's ground truth: CTC TRA label masks (T, Y, X) and its lineage table."""
    import tifffile

    from ijtorch.io.ctc import read_ctc_tracks

    tra = SHARED_DATA / "tracking_bacteria" / "01_GT" / "TRA"
    if not tra.is_dir():
        pytest.skip(f"real data not found at {tra}")
    lab = np.stack([tifffile.imread(p) for p in sorted(tra.glob("man_track*.tif"))])
    return lab, read_ctc_tracks(tra / "man_track.txt")
