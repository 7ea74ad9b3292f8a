"""``ijtorch serve`` with one more macro function, ``Ext.ijtorchLocalOnly``, registered without
``remote=True``: the server lists it but must refuse to run it (it stands for functions that
need in-process Python, e.g. ones reading ImageJ state through the JVM)."""

from __future__ import annotations

import sys

from ijtorch.bridge import macro_function


@macro_function("ijtorchLocalOnly")
def ijtorch_local_only() -> str:
    """Ext.ijtorchLocalOnly(): only for a Python-started ImageJ."""
    return "local"


if __name__ == "__main__":
    from ijtorch.serve._main import main

    sys.exit(main(sys.argv[1:]))
