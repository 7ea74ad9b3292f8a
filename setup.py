"""Build hook: compile the Java shim into the wheel (``ijtorch/java/ijtorch-shim.jar``).

Metadata lives in pyproject.toml. Without javac or ImageJ the wheel is built without a jar and
ijtorch compiles it on first use instead.
"""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithShim(build_py):
    def run(self):
        super().run()
        sys.path.insert(0, str(Path(__file__).parent / "python"))
        try:
            from ijtorch.bridge._runtime import embedded_classpath
            from ijtorch.bridge._shim import build_jar

            target = Path(self.build_lib) / "ijtorch" / "java" / "ijtorch-shim.jar"
            build_jar(embedded_classpath()[0], target)
        except Exception as exc:  # noqa: BLE001 - a missing JDK must not break pip install
            print(f"ijtorch: shim jar not prebuilt ({exc}); it will be compiled on first use")
        finally:
            sys.path.pop(0)


setup(cmdclass={"build_py": BuildPyWithShim})
