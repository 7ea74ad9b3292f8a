"""ijtorch inside a real Fiji: attach to a running ImageJ2 gateway, or start Fiji from Python.

Two entry points:

* :func:`attach` registers every ijtorch command and macro function into an ImageJ2 gateway
  someone else created (``imagej.init(...)`` of pyimagej, or a ``net.imagej.ImageJ`` made with
  JPype). The gateway must have the legacy (ImageJ 1.x) layer active: ijtorch commands are
  ImageJ 1.x commands, callable from macros, Jython and ImageJ2 scripts via ``IJ.run``.
* :func:`fiji_gateway` starts a JVM with a Fiji.app's jars (no network, no Maven, the system
  Java), creates the ``net.imagej.ImageJ`` gateway and attaches ijtorch to it.

Getting the shim into a JVM that is already running
---------------------------------------------------
ImageJ 1.x loads a command's class by name through ``IJ.getClassLoader()``. JPype's
``addClassPath`` only works before the JVM starts; afterwards it feeds JPype's own child class
loader, which ImageJ never asks (verified with Fiji 2.14: ``IJ.getClassLoader()`` is the system
class loader and ``loadClass("ijtorch.IjtorchRegistry")`` fails). So, when ImageJ cannot see the
shim, :func:`ensure_shim` defines its classes directly in ImageJ's class loader with
``ClassLoader.defineClass`` made accessible by reflection. That needs the JVM option
``--add-opens=java.base/java.lang=ALL-UNNAMED``, which ImageJ2's legacy layer needs anyway and
which pyimagej passes on Java 9+. JPype then finds the same classes (its loader delegates to the
system loader first), so Python and ImageJ share one ``IjtorchRegistry``. When the shim jar is
installed in ``Fiji.app/plugins`` (``ijtorch install-fiji``) and already on the class path,
nothing is injected; a shim built from different sources is refused with the command to update it.

pyimagej offline
----------------
``imagej.init(fiji_dir)`` has two traps without network access (pyimagej 1.8.0, scyjava 1.12):
scyjava's default ``fetch_java="always"`` downloads a JDK, and ``fetch="never"`` makes
``imagej._guess_java_version`` raise ``UnboundLocalError``; and importing ``imagej`` imports
``imglyb``, whose JVM-start callbacks raise ``TypeError: Class net.imglib2.python.Helpers is not
found`` unless ``imglib2-imglyb-*.jar`` is on the class path (a stock Fiji has none). Hence
:func:`fiji_gateway` starts the JVM itself and returns the plain Java gateway; it wraps it with
pyimagej only when pyimagej is installed *and* the Fiji carries the imglyb jar.
"""

from __future__ import annotations

import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

from ..errors import BridgeError

__all__ = ["attach", "fiji_gateway", "ensure_shim", "legacy_active", "find_fiji"]

log = logging.getLogger(__name__)

ADD_OPENS = "--add-opens=java.base/java.lang=ALL-UNNAMED"
SHIM_CLASS = "ijtorch.IjtorchRegistry"


def find_fiji(fiji: str | os.PathLike | None = None) -> Path:
    """The Fiji.app folder: ``fiji``, else ``$IJTORCH_FIJI``; raises BridgeError saying what is wrong."""
    given = fiji if fiji is not None else os.environ.get("IJTORCH_FIJI")
    if not given:
        raise BridgeError("no Fiji given: pass fiji=/path/to/Fiji.app (CLI: --fiji PATH) or set IJTORCH_FIJI")
    path = Path(given).expanduser()
    if path.name != "Fiji.app" and (path / "Fiji.app" / "jars").is_dir():
        path = path / "Fiji.app"
    if not (path / "jars").is_dir():
        raise BridgeError(f"fiji={str(given)!r} is not a Fiji.app folder (it has no jars/ folder)")
    if not any((path / "jars").glob("imagej-[0-9]*.jar")):
        raise BridgeError(f"{path} has no ImageJ2 jar (jars/imagej-2*.jar); is it a complete Fiji.app?")
    return path


def _java_gateway(ij: Any) -> Any:
    """The ``net.imagej.ImageJ`` behind ``ij`` (pyimagej's gateway is that Java object itself)."""
    from jpype import JClass

    ImageJ = JClass("net.imagej.ImageJ")
    if isinstance(ij, ImageJ):
        return ij
    inner = getattr(ij, "_ij", None)  # wrappers that hold the gateway
    if inner is not None and isinstance(inner, ImageJ):
        return inner
    raise TypeError(f"ij must be an ImageJ2 gateway (net.imagej.ImageJ, e.g. from imagej.init), got {type(ij).__name__}")


def legacy_active(gateway: Any) -> bool:
    """True when the gateway's ImageJ 1.x layer (imagej-legacy) is active."""
    try:
        legacy = gateway.get("net.imagej.legacy.LegacyService")
    except Exception:  # no imagej-legacy on the class path
        return False
    return legacy is not None and bool(legacy.isActive())


def _shim_classes(jar: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(jar) as z:
        return {n[:-6].replace("/", "."): z.read(n) for n in z.namelist() if n.endswith(".class")}


def ensure_shim(jar: Path | None = None) -> Any:
    """Make the ijtorch shim classes loadable by ImageJ 1.x in the running JVM; return its loader.

    See the module docstring for why and how. Raises BridgeError when the classes cannot be put
    there or when a different build of the shim is already loaded.
    """
    from jpype import JArray, JByte, JClass, JInt

    from ._shim import _jar_digest, shim_jar, sources_digest

    loader = JClass("ij.IJ").getClassLoader()
    try:
        loader.loadClass(SHIM_CLASS)
        present = True
    except Exception:
        present = False
    if present:
        stamp = loader.getResource("ijtorch/sources.sha256")
        digest = None
        if stamp is not None:
            stream = stamp.openStream()
            try:
                digest = bytes(stream.readAllBytes()).decode().strip()
            finally:
                stream.close()
        if digest is not None and digest != sources_digest():
            raise BridgeError("this Fiji has an ijtorch shim from another ijtorch version on its class path "
                              f"({stamp}); update it with: ijtorch install-fiji <Fiji.app>")
        _check_same_class(loader)
        return loader
    if jar is None:
        from ._runtime import _imagej_jar

        # ij1-patcher defines ij.IJ without a code source, so ask for the class file's URL instead
        url = str(loader.getResource("ij/IJ.class") or "")
        if not url.startswith("jar:file:"):
            raise BridgeError(f"cannot locate the ImageJ 1.x jar (ij/IJ.class is at {url or 'nowhere'}) to build the shim against")
        from urllib.parse import unquote

        jar = shim_jar(_imagej_jar([Path(unquote(url[len("jar:file:"):].split("!")[0]))]))
    if _jar_digest(Path(jar)) is None:
        raise BridgeError(f"{jar} is not an ijtorch shim jar")
    String = JClass("java.lang.String")
    try:
        define = JClass("java.lang.ClassLoader").class_.getDeclaredMethod(
            "defineClass", String.class_, JArray(JByte).class_, JInt.class_, JInt.class_)
        define.setAccessible(True)
    except Exception as exc:
        raise BridgeError(
            "cannot add the ijtorch shim to the running JVM: it was started without "
            f"{ADD_OPENS} (pyimagej adds it on Java 9+). Either start it with that option, or install "
            "the shim into the Fiji (ijtorch install-fiji <Fiji.app>) so it is on the class path") from exc
    pending = _shim_classes(Path(jar))
    while pending:  # superclasses/interfaces first: retry what failed until nothing moves
        failed: dict[str, bytes] = {}
        last: Exception | None = None
        for name, data in pending.items():
            try:
                define.invoke(loader, name, JArray(JByte)(data), JInt(0), JInt(len(data)))
            except Exception as exc:
                failed[name] = data
                last = exc
        if len(failed) == len(pending):
            raise BridgeError(f"could not define the ijtorch shim classes {sorted(failed)} in {loader}: {last}")
        pending = failed
    log.info("ijtorch shim defined in ImageJ's class loader %s", loader)
    _check_same_class(loader)
    return loader


def _check_same_class(loader: Any) -> None:
    from jpype import JClass

    if JClass(SHIM_CLASS).class_ != loader.loadClass(SHIM_CLASS):
        raise BridgeError(f"ImageJ ({loader}) and JPype see two different copies of {SHIM_CLASS}; put the shim "
                          "on the JVM class path once (ijtorch install-fiji) and start again")


def attach(ij: Any = None) -> Any:
    """Register every ijtorch command and macro function into an existing ImageJ2 gateway.

    Parameters
    ----------
    ij
        A ``net.imagej.ImageJ`` gateway with the legacy layer active, e.g. from
        ``imagej.init("/path/to/Fiji.app", mode="headless")`` or :func:`fiji_gateway`. ``None``
        attaches to the ImageJ 1.x of the running JVM without an ImageJ2 gateway.

    Returns
    -------
    The gateway passed in (``None`` stays ``None``).

    Raises
    ------
    TypeError
        ``ij`` is not an ImageJ2 gateway.
    BridgeError
        No JVM is running, the legacy layer is inactive, or the shim cannot be added.

    Examples
    --------
    >>> import imagej, ijtorch                              # doctest: +SKIP
    >>> ij = imagej.init("/opt/fiji/Fiji.app", mode="headless")  # doctest: +SKIP
    >>> ijtorch.attach(ij)                                  # doctest: +SKIP
    >>> ij.py.run_macro('run("ijtorch Segment", "model=nuclei output=[label map]");')  # doctest: +SKIP
    """
    import jpype

    from . import _runtime
    from .registry import install_registered

    if not jpype.isJVMStarted():
        raise BridgeError("attach() needs a running JVM with ImageJ: create the gateway first "
                          "(imagej.init(...) or ijtorch.bridge.fiji_gateway(...)), or use ijtorch.bridge.start()")
    if ij is not None:
        gateway = _java_gateway(ij)
        if not legacy_active(gateway):
            raise BridgeError("the gateway's ImageJ 1.x layer is not active, and ijtorch commands are ImageJ 1.x "
                              "commands: create it with legacy support (imagej.init(..., add_legacy=True), "
                              "the default, with imagej-legacy and ij jars present)")
    try:
        jpype.JClass("ij.IJ")
    except Exception as exc:
        raise BridgeError("no ImageJ 1.x (ij.IJ) in the running JVM; attach needs a Fiji/ImageJ2 with legacy support") from exc
    if _runtime.is_started():
        install_registered()
        return ij
    loader = ensure_shim()
    stamp = loader.getResource("ijtorch/sources.sha256")
    fiji = os.environ.get("IJTORCH_FIJI")
    _runtime.adopt(mode="attached", classpath=[], shim_jar=str(stamp) if stamp is not None else "", fiji=fiji)
    install_registered()
    log.info("ijtorch attached: %d commands registered", len(__import__("ijtorch.bridge.registry",
                                                                         fromlist=["x"]).registered_commands()))
    return ij


def _has_imglyb_jar(fiji: Path) -> bool:
    return any((fiji / "jars").glob("imglib2-imglyb-*.jar"))


def fiji_gateway(fiji: str | os.PathLike | None = None, *, pyimagej: bool | None = None,
                 headless: bool = False) -> Any:
    """Start a JVM with a Fiji.app's jars and return its ImageJ2 gateway with ijtorch attached.

    Works offline: the system Java, the Fiji's own jars, no Maven. Runs once per process (one
    JVM per process); a second call returns the same gateway.

    Parameters
    ----------
    fiji
        The Fiji.app folder (default ``$IJTORCH_FIJI``).
    pyimagej
        Wrap the gateway with pyimagej (``ij.py``...). ``None`` (default): when pyimagej is
        installed and the Fiji has ``jars/imglib2-imglyb-*.jar``. ``True`` raises a BridgeError
        naming the missing piece otherwise.
    headless
        A headless JVM (``java.awt.headless=true``) as Fiji's ``--headless``: no X display, no
        Xvfb; commands keep their outputs as non-displayed ImageJ objects and files.
    """
    from jpype import JClass

    from . import _runtime

    path = find_fiji(fiji)
    if pyimagej is None:
        pyimagej = _has_imglyb_jar(path) and _pyimagej_installed()
    elif pyimagej and not _pyimagej_installed():
        raise BridgeError("pyimagej=True but pyimagej is not installed: pip install pyimagej")
    elif pyimagej and not _has_imglyb_jar(path):
        raise BridgeError(f"pyimagej=True needs {path}/jars/imglib2-imglyb-*.jar (pyimagej's imglyb loads it at JVM "
                          "start); copy it from a machine with Maven access, or use pyimagej=False")
    if "imglyb" in sys.modules and not _has_imglyb_jar(path) and not _runtime.is_started():
        raise BridgeError(f"imagej/imglyb was imported before the JVM started, and {path} has no "
                          "imglib2-imglyb jar, so the JVM start would fail in imglyb's start-up hook; import "
                          "imagej after fiji_gateway(), or add the jar to Fiji.app/jars")
    _runtime.start(fiji=str(path), headless=headless)
    global _gateway
    if _gateway is None:
        if pyimagej:
            import imagej

            _gateway = imagej.init(str(path), mode="headless")  # JVM runs already: no download, no Maven
        else:
            _gateway = JClass("net.imagej.ImageJ")()
        if not legacy_active(_java_gateway(_gateway)):
            raise BridgeError(f"{path}: ImageJ2 started without an active legacy layer (jars/imagej-legacy-*.jar "
                              "missing?), so ImageJ 1.x commands cannot run")
    attach(_gateway)
    return _gateway


def _pyimagej_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("imagej") is not None


_gateway: Any = None
