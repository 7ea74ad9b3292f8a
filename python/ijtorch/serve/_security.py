"""Checks that keep the server safe to run: binding, tokens, model names, request size."""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
from typing import Any

__all__ = ["LOOPBACK_HOSTS", "is_loopback", "check_bind", "token_matches", "ModelNames", "MODEL_NAME_RE"]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str:
    """Refuse to listen beyond this machine without a token; returns the start-up notice.

    Raises
    ------
    ValueError
        ``host`` is not a loopback address and ``token`` is empty, or the token is too short.
    """
    if not isinstance(host, str) or not host:
        raise ValueError(f"host={host!r}: expected an address such as 127.0.0.1")
    if token is not None and len(token) < 16:
        raise ValueError("--token must be at least 16 characters (e.g. python3 -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))')")
    if is_loopback(host):
        return (f"listening on {host} (this machine only)"
                + ("; clients must send 'Authorization: Bearer <token>'" if token else ""))
    if not token:
        raise ValueError(f"--host {host} is reachable from other machines: pass --token T (clients send "
                         "'Authorization: Bearer T'), or keep the default --host 127.0.0.1")
    return (f"listening on {host}, reachable from OTHER MACHINES; every request except /health must send "
            "'Authorization: Bearer <token>'. Traffic is not encrypted: put a TLS proxy in front for untrusted networks")


def token_matches(expected: str, authorization: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header value."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[7:].strip().encode(), expected.encode())


class ModelNames:
    """Registered model names, re-read from the model folders at most every ``refresh_s`` seconds.

    Clients name models; they never give paths. A name is accepted only if it is a plain name
    (no path separators, no ``..``) and a registered model (bundled or user) has it.
    """

    def __init__(self, refresh_s: float = 5.0) -> None:
        self.refresh_s = refresh_s
        self._paths: dict[str, str] = {}
        self._read_at = -1e9

    def _refresh(self) -> None:
        from ijtorch.models.store import list_models

        self._paths = {m["name"]: m["path"] for m in list_models()}
        self._read_at = time.monotonic()

    def names(self) -> list[str]:
        if time.monotonic() - self._read_at > self.refresh_s:
            self._refresh()
        return sorted(self._paths)

    def resolve(self, name: Any) -> str:
        """The model folder of a registered ``name``.

        Raises
        ------
        ValueError
            ``name`` is not a plain name (message says so).
        LookupError
            No registered model has that name (message lists the registered ones).
        """
        if not isinstance(name, str) or not MODEL_NAME_RE.match(name) or ".." in name:
            raise ValueError(f"model={name!r}: give a registered model name (letters, digits, '.', '-', '_'; "
                             "no paths or '..')")
        if name not in self._paths and time.monotonic() - self._read_at > min(self.refresh_s, 1.0):
            self._refresh()
        if name not in self._paths:
            raise LookupError(f"model={name!r} is not registered on this server; registered: {self.names()}")
        return self._paths[name]
