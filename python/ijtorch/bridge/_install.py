"""``ijtorch install-fiji``: put ijtorch's shim, Fiji scripts and example macros into a Fiji.app.

What goes where:

==============================  =============================================
``plugins/ijtorch_shim.jar``    the Java shim (ImageJ 1.x loads plugin jars whose name has an underscore);
                                its menu (plugins.config) lists only the commands a server runs
``scripts/Plugins/ijtorch/*``   ``jython_scripts/*.py`` whose commands a server runs (menu Plugins > ijtorch)
``macros/ijtorch/*.ijm``        ``fiji_macros/*.ijm``
``ijtorch.properties``          server URL and the Python that installed it
``ijtorch-install.json``        manifest: every file written, with its SHA-256
==============================  =============================================

``--uninstall`` removes the files the manifest lists (a file changed since, by SHA-256, is
kept and reported), then the folders it created if they are empty, then the manifest.
``ijtorch.properties`` keys (``server.url`` and ``server.token`` read by the shim's ``IjtorchServer``):
``server.url``, ``python.executable``, ``ijtorch.version``, ``shim.sources.sha256``.

A Fiji started normally has no Python in it: its ijtorch commands run on the configured server, which
runs only the commands declared ``remote``. So the installed menu lists those (and the scripts that use
only those); the others (training, evaluation, embedding, bioimage.io export/import) need a Fiji started
from Python (``ijtorch fiji --fiji Fiji.app``, where the session's own shim lists every command). The
manifest's ``needs_python`` lists them and ``install-fiji`` prints them. A macro naming one gets ImageJ's
"Unrecognized command" (ImageJ 1.x has no table-only entry in plugins.config: every line makes a menu item);
where such a command is in ImageJ's table without Python (an older install's menu), the shim refuses it
before sending anything: "... cannot run on the ijtorch server at <url>: it needs in-process Python".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

from ..errors import BridgeError

__all__ = ["install_fiji", "uninstall_fiji", "resource_dir", "MANIFEST", "PROPERTIES"]

MANIFEST = "ijtorch-install.json"
PROPERTIES = "ijtorch.properties"
# ImageJ 1.x installs plugins only from jars whose file name contains an underscore.
INSTALLED_JAR = "ijtorch_shim.jar"


def resource_dir(name: str) -> Path:
    """``jython_scripts`` or ``fiji_macros``: packaged copy first, else the source checkout's."""
    here = Path(__file__).resolve()
    for candidate in (here.parent.parent / "fiji" / name, here.parents[3] / name):
        if candidate.is_dir():
            return candidate
    raise BridgeError(f"ijtorch's {name}/ folder was not found next to the package or in the source checkout")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _needs_python(text: str) -> list[str]:
    """The built-in commands ``text`` names (``"ijtorch Train Segmentation"``) that a server cannot run."""
    from ..commands.command import all_commands

    commands = all_commands()
    return sorted({n for n in re.findall(r'"(ijtorch [^"]+)"', text) if n in commands and not commands[n].remote})


# The menu's order, by task, as IjtorchRegistry.taskRank orders commands installed at run time.
_MENU_ORDER = ("Segment", "Track", "Classif", "Restore", "Denoise", "Artificial", "Train", "Evaluat", "Embed",
               "Percentile", "Macro Functions")


def _menu_rank(line: str) -> tuple[int, str]:
    # the quoted command name alone, as Java's compareTo sees it ("Segment" before "Segment on Cluster")
    found = re.search(r'"(?:ijtorch )?([^"]*)"', line)
    name = found.group(1) if found else line
    return next((i for i, prefix in enumerate(_MENU_ORDER) if name.startswith(prefix)), len(_MENU_ORDER)), name


def _server_jar(jar: Path, target: Path) -> list[str]:
    """Copy the shim ``jar`` to ``target`` with a plugins.config that lists only what a server runs;
    returns the commands left out."""
    with zipfile.ZipFile(jar) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "plugins.config":
                lines = data.decode().splitlines()
                left_out = {line for line in lines if _needs_python(line)}
                kept = sorted((line for line in lines if line not in left_out), key=_menu_rank)
                data = "".join(line + "\n" for line in kept).encode()
            dst.writestr(info, data)
    return sorted(n for line in left_out for n in _needs_python(line))


def _check_fiji(fiji: Path) -> Path:
    fiji = Path(fiji).expanduser().resolve()
    if not (fiji / "jars").is_dir() or not (fiji / "plugins").is_dir():
        raise BridgeError(f"{fiji} is not a Fiji.app folder (it needs jars/ and plugins/)")
    return fiji


def install_fiji(fiji: str | os.PathLike, *, server: str | None = None) -> dict:
    """Install ijtorch into ``fiji``; returns the manifest. Re-installing replaces the last install.

    Parameters
    ----------
    fiji
        The Fiji.app folder.
    server
        URL of an ijtorch server for Fiji sessions started without Python (``http://host:port``).
    """
    from .. import __version__
    from ._shim import shim_jar, sources_digest

    root = _check_fiji(Path(fiji))
    if server is not None and not server.startswith(("http://", "https://")):
        raise ValueError(f"server={server!r}: give a URL starting with http:// or https://")
    if (root / MANIFEST).exists():
        uninstall_fiji(root)
    ij_jars = sorted((root / "jars").glob("ij-*.jar")) or sorted((root / "jars").glob("ij.jar"))
    if not ij_jars:
        raise BridgeError(f"{root}/jars has no ImageJ 1.x jar (ij-*.jar)")
    jar = shim_jar(ij_jars[0])
    scripts = sorted(resource_dir("jython_scripts").glob("*.py"))
    skipped = [p.name for p in scripts if _needs_python(p.read_text())]
    copies: list[tuple[Path, Path]] = [(p, root / "scripts" / "Plugins" / "ijtorch" / p.name)
                                       for p in scripts if p.name not in skipped]
    copies += [(p, root / "macros" / "ijtorch" / p.name) for p in sorted(resource_dir("fiji_macros").glob("*.ijm"))]
    created_dirs = []
    for d in (root / "scripts" / "Plugins" / "ijtorch", root / "macros" / "ijtorch"):
        missing = [p for p in (d.parent.parent, d.parent, d) if not p.exists()]
        for p in missing:
            p.mkdir()
            created_dirs.append(str(p.relative_to(root)))
    files = {}
    installed_jar = root / "plugins" / INSTALLED_JAR
    for src, dst in [(jar, installed_jar), *copies]:
        if dst.exists():
            raise BridgeError(f"{dst} exists and was not installed by ijtorch; move it away first")
        if dst == installed_jar:
            needs_python = _server_jar(src, dst)
        else:
            shutil.copyfile(src, dst)
        files[str(dst.relative_to(root))] = _sha256(dst)
    props = root / PROPERTIES
    if props.exists():
        raise BridgeError(f"{props} exists and was not installed by ijtorch; move it away first")
    lines = ["# written by 'ijtorch install-fiji'; removed by 'ijtorch install-fiji --uninstall'",
             f"ijtorch.version={__version__}", f"python.executable={sys.executable}",
             f"shim.sources.sha256={sources_digest()}"]
    if server:
        lines.append(f"server.url={server}")
    props.write_text("\n".join(lines) + "\n")
    files[PROPERTIES] = _sha256(props)
    manifest = {"ijtorch_version": __version__, "files": files, "created_dirs": created_dirs, "server": server,
                "needs_python": {"commands": needs_python, "scripts": skipped}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def uninstall_fiji(fiji: str | os.PathLike) -> list[str]:
    """Remove what :func:`install_fiji` wrote; returns the paths kept because they were changed."""
    root = _check_fiji(Path(fiji))
    path = root / MANIFEST
    if not path.exists():
        raise BridgeError(f"{root} has no {MANIFEST}: ijtorch is not installed there (nothing removed)")
    manifest = json.loads(path.read_text())
    kept = []
    for rel, digest in manifest["files"].items():
        f = root / rel
        if not f.exists():
            continue
        if _sha256(f) != digest:
            kept.append(rel)
            continue
        f.unlink()
    for rel in sorted(manifest.get("created_dirs", []), key=len, reverse=True):
        d = root / rel
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    path.unlink()
    return kept
