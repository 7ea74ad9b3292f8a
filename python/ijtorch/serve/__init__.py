"""ijtorch serve: one process holds the models and serves many Fiji/Python clients over HTTP.

``ijtorch serve`` (or ``python -m ijtorch.serve``) starts it; :class:`Client` talks to it from
Python; the Java shim's ``IjtorchRemote`` talks to it from a Fiji without Python. See
:mod:`ijtorch.serve.app` for the routes and :mod:`ijtorch.serve._wire` for the message format.
Importing this package needs neither the server stack nor torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client", "ServerError", "ServerConfig", "create_app", "serve", "check_bind"]


def __getattr__(name: str) -> Any:  # lazy: the client needs httpx only, the server starlette/uvicorn
    if name in ("Client", "ServerError"):
        from . import client

        return getattr(client, name)
    if name in ("ServerConfig", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "serve":
        from ._main import serve

        return serve
    if name == "check_bind":
        from ._security import check_bind

        return check_bind
    raise AttributeError(f"module 'ijtorch.serve' has no attribute {name!r}")
