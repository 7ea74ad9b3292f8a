"""Start one JVM per process with ImageJ 1.x on the class path, and keep it.

Embedded mode takes ImageJ 1.x, ImgLib2 and Jython from Debian's packages (``/usr/share/java``);
``IJTORCH_FIJI=/path/to/Fiji.app`` (or ``start(fiji=...)``) uses that Fiji's jars instead. Java
comes from the system (scyjava's JDK download is switched off) and no Maven resolution happens:
if a piece is missing, ``start`` fails at once naming it and the command that installs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BridgeError
from ._shim import shim_jar
from ._xvfb import VirtualDisplay, start_virtual_display

__all__ = ["Runtime", "start", "adopt", "on_start", "runtime", "is_started", "embedded_classpath", "fiji_classpath", "find_java",
           "ADD_OPENS"]

log = logging.getLogger(__name__)

DEBIAN_JAVA = Path("/usr/share/java")
APT_HINT = "apt-get install -y default-jdk-headless libij-java libimglib2-java jython xvfb"

# What Fiji's own launcher opens: ImageJ2/Fiji start through the SciJava app launcher with
# --add-opens=java.base/java.lang and -Dscijava.app.unlock-modules=true, which opens the JDK's
# packages to the class path at start-up. A JVM started from Python does not go through that
# launcher, so the packages Fiji's plugins reach into are opened here: gson (TrackMate's
# DisplaySettingsIO serialises java.awt.Font/Color, whose fields hold java.util collections),
# AWT/X11 (XToolkit's awtAppClassName, set by ImageJ and SciJava's UI), Swing, NIO.
ADD_OPENS = tuple(f"--add-opens={spec}=ALL-UNNAMED" for spec in (
    "java.base/java.lang", "java.base/java.lang.invoke", "java.base/java.lang.reflect", "java.base/java.io",
    "java.base/java.net", "java.base/java.nio", "java.base/java.text", "java.base/java.time",
    "java.base/java.util", "java.base/java.util.concurrent", "java.base/java.util.concurrent.atomic",
    "java.base/java.util.regex", "java.base/sun.nio.ch", "java.base/sun.nio.fs", "java.base/jdk.internal.loader",
    "java.desktop/java.awt", "java.desktop/java.awt.color", "java.desktop/java.awt.event",
    "java.desktop/java.awt.font", "java.desktop/java.awt.geom", "java.desktop/java.awt.image",
    "java.desktop/javax.swing", "java.desktop/javax.swing.plaf.basic", "java.desktop/javax.swing.text",
    "java.desktop/sun.awt", "java.desktop/sun.awt.X11", "java.desktop/sun.awt.image", "java.desktop/sun.font",
    "java.desktop/sun.java2d", "java.desktop/sun.swing",
))


@dataclass(frozen=True)
class Runtime:
    """What ``start`` brought up: the mode, the jars and the display ImageJ draws on."""

    mode: str  # "embedded" or "fiji"
    classpath: tuple[str, ...]
    shim_jar: str
    imagej_version: str
    java_version: str
    display: str | None
    fiji: str | None = None
    xvfb: VirtualDisplay | None = field(default=None, compare=False, repr=False)
    headless: bool = False  # java.awt.headless=true: no display, no Xvfb (Fiji mode only)

    @property
    def xvfb_pid(self) -> int | None:
        return self.xvfb.pid if self.xvfb else None


_lock = threading.RLock()
_runtime: Runtime | None = None


def find_java() -> str:
    """Path of the system ``java`` (JAVA_HOME first); raises BridgeError naming the install."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    exe = shutil.which("java")
    if exe is None:
        raise BridgeError(f"Java was not found (no JAVA_HOME, no java on PATH). Install it with: {APT_HINT}")
    return exe


def embedded_classpath() -> list[Path]:
    """ImageJ 1.x, ImgLib2 and Jython jars from Debian (``IJTORCH_IJ_JAR`` overrides ImageJ's)."""
    ij = Path(os.environ.get("IJTORCH_IJ_JAR") or DEBIAN_JAVA / "ij.jar")
    if not ij.exists():
        raise BridgeError(
            f"ImageJ 1.x jar not found at {ij}. Install it with: {APT_HINT}  "
            "(or point IJTORCH_FIJI at a Fiji.app)"
        )
    jars = [ij]
    for name, package in (("imglib2.jar", "libimglib2-java"), ("jython.jar", "jython")):
        path = DEBIAN_JAVA / name
        if not path.exists():
            raise BridgeError(f"{path} not found. Install it with: apt-get install -y {package}")
        jars.append(path)
    return jars


def fiji_classpath(fiji: Path) -> list[Path]:
    """Every jar of a Fiji.app under ``jars/`` and ``plugins/`` except other platforms' natives."""
    fiji = Path(fiji)
    if not (fiji / "jars").is_dir():
        raise BridgeError(f"{fiji} is not a Fiji.app folder (no jars/ inside); check IJTORCH_FIJI")
    skip = ("win32", "win64", "macosx", "linux32")
    # An ijtorch shim put into plugins/ by ``ijtorch install-fiji`` is left out: the session adds
    # the shim built from its own sources, and two copies on one class path would shadow it.
    jars = [p for sub in ("jars", "plugins") for p in sorted((fiji / sub).rglob("*.jar"))
            if not any(part in skip for part in p.relative_to(fiji).parts)
            and not p.name.startswith(("ijtorch-shim", "ijtorch_shim"))]
    if not any(p.name.startswith("ij-") or p.name == "ij.jar" for p in jars):
        raise BridgeError(f"{fiji} holds no ImageJ 1.x jar (jars/ij-*.jar)")
    if not any(p.name.startswith("jython") and "STUB" not in p.name for p in jars) \
            and (DEBIAN_JAVA / "jython.jar").exists():
        # Some Fiji copies lack jython-slim (a large jar); Debian's Jython stands in for Python scripts.
        # It needs Debian's patched antlr3 runtime (Token.EOF_TOKEN) ahead of Fiji's antlr-runtime.
        log.info("%s has no Jython jar; using %s for Python scripts", fiji, DEBIAN_JAVA / "jython.jar")
        jars.append(DEBIAN_JAVA / "jython.jar")
        if (DEBIAN_JAVA / "antlr3-runtime.jar").exists():
            jars.insert(0, DEBIAN_JAVA / "antlr3-runtime.jar")
    return jars


def _imagej_jar(classpath: list[Path]) -> Path:
    for p in classpath:
        if p.name == "ij.jar" or (p.name.startswith("ij-") and p.parent.name == "jars"):
            return p
    return classpath[0]


_ON_START: list = []  # called once the runtime is up (bridge.registry installs the commands)


def on_start(hook) -> None:
    """Call ``hook()`` when :func:`start` has brought ImageJ up."""
    _ON_START.append(hook)


def is_started() -> bool:
    return _runtime is not None


def runtime() -> Runtime:
    """The running bridge; starts it with defaults when needed."""
    return _runtime if _runtime is not None else start()


def start(*, fiji: str | os.PathLike | None = None, headless: bool = False) -> Runtime:
    """Start the JVM with ImageJ (once per process) and register ijtorch's commands.

    Parameters
    ----------
    fiji
        A Fiji.app folder whose jars to use; defaults to ``$IJTORCH_FIJI``, else the embedded
        Debian ImageJ.
    headless
        Start a headless JVM (``java.awt.headless=true``) as Fiji's ``--headless`` does: no X
        display and no Xvfb needed. Needs a Fiji (its ImageJ 1.x patcher makes ImageJ work
        headless; the plain Debian ImageJ needs AWT for its command table).
    """
    global _runtime
    with _lock:
        fiji = fiji if fiji is not None else (os.environ.get("IJTORCH_FIJI") or None)
        if _runtime is not None:
            if fiji is not None and _runtime.fiji != str(fiji):
                raise BridgeError(f"the JVM already runs in {_runtime.mode} mode; one process can hold one JVM "
                                  f"(asked for Fiji at {fiji})")
            return _runtime
        if headless and not fiji:
            raise BridgeError("a headless JVM needs a Fiji.app (IJTORCH_FIJI or --fiji): the embedded ImageJ 1.x "
                              "builds its command table with AWT (it uses a private Xvfb instead)")
        find_java()
        classpath = fiji_classpath(Path(fiji)) if fiji else embedded_classpath()
        jar = shim_jar(_imagej_jar(classpath))
        xvfb = None
        if not headless and not os.environ.get("DISPLAY"):
            xvfb = start_virtual_display()
            os.environ["DISPLAY"] = xvfb.display
        _start_jvm([*map(str, classpath), str(jar)], preinit=bool(fiji), headless=headless)
        from jpype import JClass

        System = JClass("java.lang.System")
        headless = bool(JClass("java.awt.GraphicsEnvironment").isHeadless())
        IJ = JClass("ij.IJ")
        if not headless:
            System.setProperty("java.awt.headless", "false")
            if IJ.getInstance() is None:
                ImageJ = JClass("ij.ImageJ")
                ImageJ(ImageJ.NO_SHOW)
        _runtime = Runtime(
            mode="fiji" if fiji else "embedded",
            classpath=tuple(map(str, classpath)),
            shim_jar=str(jar),
            imagej_version=str(IJ.getFullVersion()),
            java_version=str(System.getProperty("java.version")),
            display=None if headless else os.environ.get("DISPLAY"),
            fiji=str(fiji) if fiji else None,
            xvfb=xvfb,
            headless=headless,
        )
        log.info("ImageJ %s started (%s mode, display %s)", _runtime.imagej_version, _runtime.mode, _runtime.display)
        for hook in _ON_START:
            hook()
        return _runtime


def adopt(*, mode: str, classpath: list[str], shim_jar: str, fiji: str | None) -> Runtime:
    """Record a JVM someone else started (pyimagej, ``ijtorch.attach``) as this process's bridge."""
    global _runtime
    from jpype import JClass

    with _lock:
        if _runtime is None:
            System = JClass("java.lang.System")
            _runtime = Runtime(mode=mode, classpath=tuple(classpath), shim_jar=shim_jar,
                               imagej_version=str(JClass("ij.IJ").getFullVersion()),
                               java_version=str(System.getProperty("java.version")),
                               display=os.environ.get("DISPLAY"), fiji=fiji)
        return _runtime


def _start_jvm(classpath: list[str], *, preinit: bool, headless: bool = False) -> None:
    import jpype
    import scyjava

    if jpype.isJVMStarted():
        # Someone (pyimagej, a test) started it: use it as it is, adding what classes we can.
        for entry in classpath:
            jpype.addClassPath(entry)
        return
    # scyjava would otherwise try to download a JDK; the system Java is what we want.
    scyjava.config.set_java_constraints(fetch="never")
    for entry in classpath:
        scyjava.config.add_classpath(entry)
    heap = os.environ.get("IJTORCH_JAVA_HEAP")
    options = [f"-Djava.awt.headless={'true' if headless else 'false'}", *ADD_OPENS]
    if heap:  # a fixed-size heap: growing it touches fresh pages, which is slow on VMs
        options += [f"-Xmx{heap}", f"-Xms{heap}"]
    options += os.environ.get("IJTORCH_JAVA_OPTIONS", "").split()  # e.g. -Duser.home=... (the tests' private home)
    # Destroy the JVM at exit (JPype's default, stated on purpose): leaving it alive while Python
    # finalizes lets Java threads call into a dead interpreter, which aborts the process
    # (glibc "FATAL: exception not rethrown", exit 134) and loses the script's exit code.
    jpype.config.destroy_jvm = True
    scyjava.start_jvm(options)
    if preinit:
        try:
            jpype.JClass("net.imagej.patcher.LegacyInjector").preinit()
        except Exception as exc:  # a Fiji without ij1-patcher still works as plain ImageJ 1.x
            log.debug("LegacyInjector.preinit unavailable: %s", exc)
