"""JVM start-up, the private Xvfb, the shim jar and start-up errors (each in a fresh process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


def _python(code: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120, **kw)


START = "import ijtorch.bridge as b; rt = b.start(); print(rt.xvfb_pid, rt.display, rt.imagej_version, flush=True)\n"


def test_private_xvfb_is_started_without_display_and_stopped_at_exit():
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    out = subprocess.run([sys.executable, "-c", START + "import sys; sys.exit(7)"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 7, out.stderr  # the script's own exit code survives the JVM
    pid, display, version = out.stdout.split()
    assert display.startswith(":") and version.startswith("1.5")
    deadline = time.time() + 5
    while _alive(int(pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(int(pid)), "Xvfb outlived the Python process"


def test_private_xvfb_dies_when_python_is_killed():
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    proc = subprocess.Popen([sys.executable, "-c", START + "import time; time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True, env=env)
    pid = int(proc.stdout.readline().split()[0])
    assert _alive(pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(pid), "Xvfb outlived a killed Python process"


def test_existing_display_is_used_and_no_xvfb_started(ij):
    # the session fixture's runtime: with DISPLAY set by the first start, a second start reuses it
    from ijtorch import bridge

    assert bridge.start() is ij


def test_missing_java_names_the_install_command(tmp_path):
    env = {"PATH": str(tmp_path), "JAVA_HOME": ""}
    out = _python("import ijtorch.bridge as b\ntry:\n b.start()\nexcept Exception as e: print(type(e).__name__, e)", env=env)
    assert "BridgeError Java was not found" in out.stdout
    assert "apt-get install -y default-jdk-headless" in out.stdout


def test_missing_imagej_jar_names_the_package(tmp_path):
    out = _python("import ijtorch.bridge as b\ntry:\n b.start()\nexcept Exception as e: print(type(e).__name__, e)",
                  env={"IJTORCH_IJ_JAR": str(tmp_path / "nope.jar")})
    assert "BridgeError ImageJ 1.x jar not found" in out.stdout and "libij-java" in out.stdout


def test_fiji_folder_without_jars_is_rejected(tmp_path):
    out = _python("import ijtorch.bridge as b\ntry:\n b.start()\nexcept Exception as e: print(type(e).__name__, e)",
                  env={"IJTORCH_FIJI": str(tmp_path)})
    assert "is not a Fiji.app folder" in out.stdout


def test_shim_jar_is_cached_and_rebuilt_when_sources_change(tmp_path, monkeypatch):
    from ijtorch.bridge import _shim
    from ijtorch.bridge._runtime import embedded_classpath

    monkeypatch.setenv("IJTORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_shim, "PACKAGED_JAR", tmp_path / "none.jar")
    ij_jar = embedded_classpath()[0]
    first = _shim.shim_jar(ij_jar)
    mtime = first.stat().st_mtime_ns
    assert _shim.shim_jar(ij_jar) == first and first.stat().st_mtime_ns == mtime  # cached, not rebuilt
    with zipfile.ZipFile(first) as z:
        names = set(z.namelist())
    assert {"ijtorch/IjtorchRegistry.class", "ijtorch/IjtorchCommand.class", "ijtorch/IjtorchMacroExtension.class"} <= names
    with zipfile.ZipFile(first) as z:
        config = z.read("plugins.config").decode()
    # a Fiji that loads the jar from plugins/ lists every built-in command under Plugins>ijtorch
    assert 'Plugins>ijtorch, "ijtorch Segment", ijtorch.IjtorchCommand("ijtorch Segment")' in config
    assert 'Plugins>ijtorch, "ijtorch Macro Functions", ijtorch.IjtorchMacroExtension' in config
    # a changed source gives a new digest and a new jar
    java_dir = tmp_path / "java"
    (java_dir / "ijtorch").mkdir(parents=True)
    for src in _shim.shim_sources():
        (java_dir / "ijtorch" / src.name).write_text(src.read_text())
    monkeypatch.setattr(_shim, "JAVA_DIR", java_dir)
    old_digest = _shim.sources_digest()
    registry = java_dir / "ijtorch" / "IjtorchRegistry.java"
    registry.write_text(registry.read_text() + "\n// changed\n")
    assert _shim.sources_digest() != old_digest
    second = _shim.shim_jar(ij_jar)
    assert second != first and second.exists()


def test_javac_error_is_reported(tmp_path, monkeypatch):
    from ijtorch.bridge import _shim
    from ijtorch.bridge._runtime import embedded_classpath
    from ijtorch.errors import BridgeError

    java_dir = tmp_path / "java"
    (java_dir / "ijtorch").mkdir(parents=True)
    (java_dir / "ijtorch" / "Broken.java").write_text("package ijtorch; class Broken { int x = ; }")
    monkeypatch.setattr(_shim, "JAVA_DIR", java_dir)
    with pytest.raises(BridgeError, match="javac failed to compile the ijtorch shim"):
        _shim.build_jar(embedded_classpath()[0], tmp_path / "out.jar")
    assert not (tmp_path / "out.jar").exists()


@pytest.mark.slow
def test_built_wheel_contains_the_shim_jar_and_sources(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next(tmp_path.glob("ijtorch-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "ijtorch/java/ijtorch-shim.jar" in names
        assert "ijtorch/java/ijtorch/IjtorchCommand.java" in names
        jar = tmp_path / "shim.jar"
        jar.write_bytes(z.read("ijtorch/java/ijtorch-shim.jar"))
    from ijtorch.bridge._shim import _jar_digest, sources_digest

    assert _jar_digest(jar) == sources_digest()


def test_shim_digest_ignores_user_registered_commands():
    from ijtorch import bridge
    from ijtorch.bridge import _shim

    before = _shim.sources_digest()
    bridge.register_command("ijtorch Digest Probe", lambda inputs, params: None)
    try:
        assert _shim.sources_digest() == before
        assert "Digest Probe" not in _shim.plugins_config()
    finally:
        from ijtorch.commands import command as _commands

        _commands._COMMANDS.pop("ijtorch Digest Probe", None)
