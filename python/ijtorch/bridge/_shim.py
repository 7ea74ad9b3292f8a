"""Build (or find) the ijtorch Java shim jar.

The shim's sources ship in the package (``ijtorch/java/ijtorch/*.java``). A wheel built by
``pip`` carries a prebuilt jar next to them, stamped with the SHA-256 of the sources; anywhere
else the jar is compiled with javac on first use into a cache folder, keyed by that hash, so an
edited source triggers a rebuild and an unchanged one never does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from ..errors import BridgeError

__all__ = ["shim_sources", "sources_digest", "shim_jar", "build_jar"]

log = logging.getLogger(__name__)
JAVA_DIR = Path(__file__).resolve().parent.parent / "java"
PACKAGED_JAR = JAVA_DIR / "ijtorch-shim.jar"


def shim_sources() -> list[Path]:
    return sorted((JAVA_DIR / "ijtorch").glob("*.java"))


def plugins_config() -> str:
    """ImageJ's ``plugins.config`` for the jar: every built-in command under Plugins>ijtorch.

    A Fiji that loads the jar from ``plugins/`` (``ijtorch install-fiji``) then shows the same
    menu as a Python-started one; without a Python handler the commands go to the configured
    ijtorch server.
    """
    from ..commands.command import all_commands

    lines = ['Plugins>ijtorch, "ijtorch Macro Functions", ijtorch.IjtorchMacroExtension']
    # only ijtorch's own commands: user-registered ones must not change the jar (or its digest)
    builtin = [name for name, cmd in all_commands().items()
               if getattr(cmd.compute, "__module__", "").startswith("ijtorch.commands.")]
    for name in sorted(builtin):
        lines.append(f'Plugins>ijtorch, "{name}", ijtorch.IjtorchCommand("{name}")')
    return "\n".join(lines) + "\n"


def sources_digest() -> str:
    h = hashlib.sha256()
    for path in shim_sources():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(plugins_config().encode())
    return h.hexdigest()


def _jar_digest(jar: Path) -> str | None:
    try:
        with zipfile.ZipFile(jar) as z:
            return z.read("ijtorch/sources.sha256").decode().strip()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def cache_dir() -> Path:
    root = os.environ.get("IJTORCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ijtorch")
    return Path(root)


def _compile_classpath(ij_jar: Path) -> str:
    """``ij_jar`` plus an ImgLib2 jar (next to it as in Fiji's ``jars/``, else Debian's)."""
    ij_jar = Path(ij_jar)
    candidates = [ij_jar.parent / "imglib2.jar", *sorted(ij_jar.parent.glob("imglib2-[0-9]*.jar")),
                  Path("/usr/share/java/imglib2.jar")]
    imglib2 = next((c for c in candidates if c.exists()), None)
    if imglib2 is None:
        raise BridgeError(f"no ImgLib2 jar next to {ij_jar} or in /usr/share/java; the ijtorch shim needs it. "
                          "Install it with: apt-get install -y libimglib2-java")
    return os.pathsep.join([str(ij_jar), str(imglib2)])


def build_jar(ij_jar: Path, destination: Path) -> Path:
    """Compile the shim against ``ij_jar`` and write the jar atomically to ``destination``."""
    javac = shutil.which("javac")
    if javac is None:
        raise BridgeError(
            "javac was not found, so the ijtorch Java shim cannot be compiled. "
            "Install a JDK with: apt-get install -y default-jdk-headless"
        )
    digest = sources_digest()
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ijtorch-shim-") as tmp:
        classes = Path(tmp) / "classes"
        classes.mkdir()
        cmd = [javac, "-nowarn", "--release", "11", "-encoding", "UTF-8", "-cp", _compile_classpath(ij_jar),
               "-d", str(classes), *map(str, shim_sources())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BridgeError(f"javac failed to compile the ijtorch shim:\n{proc.stderr.strip()}")
        (classes / "ijtorch" / "sources.sha256").write_text(digest + "\n")
        tmp_jar = destination.with_name(destination.name + f".tmp{os.getpid()}")
        with zipfile.ZipFile(tmp_jar, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nCreated-By: ijtorch\n")
            for f in sorted(classes.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(classes).as_posix())
            z.writestr("plugins.config", plugins_config())
        os.replace(tmp_jar, destination)
    log.info("built ijtorch shim %s", destination)
    return destination


def shim_jar(ij_jar: Path) -> Path:
    """Return an up-to-date shim jar, compiling it only when no jar matches the sources."""
    digest = sources_digest()
    if PACKAGED_JAR.exists() and _jar_digest(PACKAGED_JAR) == digest:
        return PACKAGED_JAR
    cached = cache_dir() / f"ijtorch-shim-{digest[:16]}.jar"
    if cached.exists() and _jar_digest(cached) == digest:
        return cached
    return build_jar(ij_jar, cached)
