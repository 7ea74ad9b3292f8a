"""ijtorch with the real pyimagej (issue 16): what works with a stock offline Fiji, and the exact
failures of what cannot, as the README states them.

pyimagej runs in the Python given by ``IJTORCH_PYIMAGEJ_PYTHON`` (e.g. a virtual environment made with
``--system-site-packages`` and ``pip install 'ijtorch[fiji]'``), else in this one; the test is skipped
when that Python has no pyimagej. A stock Fiji has no ``jars/imglib2-imglyb-*.jar``, and
``import imagej`` imports imglyb, whose JVM-start hook needs that jar: so no pyimagej gateway can be
made from such a Fiji at all. Then ijtorch's own gateway (``fiji_gateway``, the plain
``net.imagej.ImageJ``) is what ``attach`` works on; with the jar present, ``fiji_gateway`` returns
pyimagej's gateway with ijtorch attached and ``ij.py.run_macro`` runs ijtorch commands.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _fiji_helpers import run_in_fiji

pytestmark = [pytest.mark.fiji, pytest.mark.slow]
PYTHON = os.environ.get("IJTORCH_PYIMAGEJ_PYTHON") or sys.executable


@pytest.fixture
def pyimagej_python(fiji_path):
    found = subprocess.run([PYTHON, "-c", "import importlib.util as u; print(bool(u.find_spec('imagej')))"],
                           capture_output=True, text=True)
    if found.stdout.strip() != "True":
        pytest.skip(f"pyimagej is not installed for {PYTHON} (set IJTORCH_PYIMAGEJ_PYTHON to a Python that has it)")
    return PYTHON


def test_real_pyimagej_with_this_fiji(fiji_path, pyimagej_python, tmp_path):
    has_jar = any((fiji_path / "jars").glob("imglib2-imglyb-*.jar"))
    out = run_in_fiji("""
        from ijtorch import bridge
        from ijtorch.errors import BridgeError
        has_jar = %r
        if has_jar:
            ij = bridge.fiji_gateway()  # pyimagej's gateway (imagej.init on the JVM ijtorch started)
            value = ij.py.run_macro('newImage("a", "16-bit ramp", 32, 32, 1); '
                                    'run("ijtorch Percentile Normalize", "low=1 high=99"); t = getTitle();',
                                    {}).getOutput("t")
            report(wrapped=hasattr(ij, "py"), title=str(value))
        else:
            try:
                bridge.fiji_gateway(pyimagej=True)
                refused = ""
            except BridgeError as exc:
                refused = str(exc)
            ij = bridge.fiji_gateway()  # pyimagej installed, no jar: the plain Java gateway
            import ijtorch
            attached = ijtorch.attach(ij) is ij
            title = bridge.run_macro('newImage("a", "16-bit ramp", 32, 32, 1); '
                                     'run("ijtorch Percentile Normalize", "low=1 high=99"); return getTitle();').value
            try:
                import imagej  # noqa: F401  (imglyb's hook runs at once in a started JVM)
                late = "imported"
            except Exception as exc:
                late = type(exc).__name__ + ": " + str(exc)
            report(refused=refused, gateway=type(ij).__name__, attached=attached, title=title, late=late)
        from ijtorch.bridge._batch import end_batch
        end_batch(0)
    """ % has_jar, tmp_path, env={"DISPLAY": ""}, python=pyimagej_python)
    if has_jar:
        assert out == {"wrapped": True, "title": "a-normalized"}
        return
    assert "needs %s/jars/imglib2-imglyb-*.jar" % fiji_path in out["refused"]
    assert out["gateway"] == "net.imagej.ImageJ" and out["attached"] and out["title"] == "a-normalized"
    assert out["late"] == "TypeError: Class net.imglib2.python.Helpers is not found", out["late"]


def test_importing_pyimagej_before_the_jvm_is_refused_clearly(fiji_path, pyimagej_python, tmp_path):
    if any((fiji_path / "jars").glob("imglib2-imglyb-*.jar")):
        pytest.skip("this Fiji has the imglyb jar: importing imagej first is fine there")
    out = run_in_fiji("""
        import imagej  # registers imglyb's JVM-start hook
        from ijtorch import bridge
        from ijtorch.errors import BridgeError
        try:
            bridge.fiji_gateway()
            report(error="")
        except BridgeError as exc:
            report(error=str(exc))
    """, tmp_path, env={"DISPLAY": ""}, python=pyimagej_python)
    assert "imagej/imglyb was imported before the JVM started" in out["error"]
    assert "import imagej after fiji_gateway(), or add the jar to Fiji.app/jars" in out["error"]
