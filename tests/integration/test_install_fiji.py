"""``ijtorch install-fiji`` on a temporary Fiji-like folder: what goes where, the manifest, and an
uninstall that removes exactly what was installed (no JVM; the shim jar is built with javac)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ijtorch.bridge._install import MANIFEST, install_fiji, uninstall_fiji
from ijtorch.errors import BridgeError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_fiji(tmp_path):
    if shutil.which("javac") is None or not Path("/usr/share/java/ij.jar").exists():
        pytest.skip("javac and Debian's ij.jar are needed to build the shim (tools/setup.sh installs them)")
    root = tmp_path / "Fiji.app"
    (root / "jars").mkdir(parents=True)
    (root / "plugins").mkdir()
    (root / "scripts").mkdir()  # exists already: must survive the uninstall
    (root / "jars" / "ij-1.53t.jar").symlink_to("/usr/share/java/ij.jar")
    (root / "plugins" / "Other_Plugin.jar").write_bytes(b"not ours")
    return root


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_install_puts_each_piece_in_place_and_uninstall_restores_the_tree(fake_fiji):
    before = _tree(fake_fiji)
    manifest = install_fiji(fake_fiji, server="http://localhost:8765")
    files = set(manifest["files"])
    assert "plugins/ijtorch_shim.jar" in files and "ijtorch.properties" in files
    scripts = {p.name for p in (ROOT / "jython_scripts").glob("*.py")} - {"Train_From_ROIs.py"}
    assert {f"scripts/Plugins/ijtorch/{name}" for name in scripts} <= files
    assert {f"macros/ijtorch/{p.name}" for p in (ROOT / "fiji_macros").glob("*.ijm")} <= files
    assert all((fake_fiji / f).is_file() for f in files)
    props = (fake_fiji / "ijtorch.properties").read_text()
    assert "server.url=http://localhost:8765" in props and f"python.executable={sys.executable}" in props
    assert json.loads((fake_fiji / MANIFEST).read_text())["files"] == manifest["files"]
    assert uninstall_fiji(fake_fiji) == []
    assert _tree(fake_fiji) == before


def test_the_installed_menu_lists_only_what_a_server_runs(fake_fiji):
    """A Fiji started without Python runs its commands on the server: the jar's plugins.config lists the
    remote commands (by task) and Macro Functions; scripts that need Python stay out; the manifest names both."""
    import zipfile

    from ijtorch.commands.command import all_commands

    manifest = install_fiji(fake_fiji, server="http://localhost:8765")
    with zipfile.ZipFile(fake_fiji / "plugins" / "ijtorch_shim.jar") as jar:
        config = jar.read("plugins.config").decode().splitlines()
        assert "ijtorch/IjtorchServer.class" in jar.namelist()
    listed = [line.split('"')[1] for line in config]
    remote = sorted(n for n, c in all_commands().items() if c.remote and c.compute.__module__.startswith("ijtorch."))
    assert sorted(listed) == sorted([*remote, "ijtorch Macro Functions"])
    # by task as the Java registry orders them; within a task by name ("Segment" before "Segment on Cluster")
    assert listed[:3] == ["ijtorch Segment", "ijtorch Segment on Cluster", "ijtorch Track"]
    assert listed[-1] == "ijtorch Macro Functions"
    assert "ijtorch Train Segmentation" in manifest["needs_python"]["commands"]
    assert set(manifest["needs_python"]["commands"]).isdisjoint(listed)
    assert manifest["needs_python"]["scripts"] == ["Train_From_ROIs.py"]
    assert not (fake_fiji / "scripts" / "Plugins" / "ijtorch" / "Train_From_ROIs.py").exists()
    assert uninstall_fiji(fake_fiji) == []


def test_uninstall_keeps_a_file_the_user_changed(fake_fiji):
    install_fiji(fake_fiji)
    changed = fake_fiji / "macros" / "ijtorch" / "segment_folder.ijm"
    changed.write_text("// my edits\n")
    assert uninstall_fiji(fake_fiji) == ["macros/ijtorch/segment_folder.ijm"]
    assert changed.read_text() == "// my edits\n" and not (fake_fiji / "plugins" / "ijtorch_shim.jar").exists()


def test_install_refuses_bad_input(fake_fiji, tmp_path):
    with pytest.raises(BridgeError, match="is not a Fiji.app folder"):
        install_fiji(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="server='localhost:1': give a URL"):
        install_fiji(fake_fiji, server="localhost:1")
    with pytest.raises(BridgeError, match="ijtorch is not installed there"):
        uninstall_fiji(fake_fiji)
    (fake_fiji / "ijtorch.properties").write_text("mine\n")
    with pytest.raises(BridgeError, match="ijtorch.properties exists and was not installed by ijtorch"):
        install_fiji(fake_fiji)


def test_cli_install_and_uninstall(fake_fiji):
    run = lambda *a: subprocess.run([sys.executable, "-m", "ijtorch.cli", "install-fiji", str(fake_fiji), *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT)
    done = run()
    assert done.returncode == 0 and "ijtorch installed into" in done.stdout, done.stderr
    assert "these need Python in the Fiji process" in done.stdout and "ijtorch Train Segmentation" in done.stdout
    done = run("--uninstall")
    assert done.returncode == 0 and "ijtorch removed from" in done.stdout, done.stderr
    done = run("--uninstall")
    assert done.returncode == 2 and "ijtorch is not installed there" in done.stderr
