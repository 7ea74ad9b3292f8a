"""Checks that keep the server safe to run: binding, tokens, model names, request size."""

from __future__ import annotations

import hmac
import ipaddress
import re
import time
from typing import Any

__all__ = ["LOOPBACK_HOSTS", "is_loopback", "check_bind", "token_matches", "read_token", "HostCheck", "ModelNames",
           "MODEL_NAME_RE"]

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
    """Constant-time check of an ``Authorization: Bearer <token>`` header value (scheme in any case)."""
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "replace"), expected.encode())


def read_token(token: str | None, token_file: str | None, environ: Any = None) -> str | None:
    """The server token: ``--token-file`` (its first line), else ``--token``, else
    ``$IJTORCH_SERVER_TOKEN`` (or the older ``$IJTORCH_TOKEN``); None when none is set.

    Raises
    ------
    ValueError
        The token file cannot be read or is empty (the message names the file).
    """
    import os

    env = os.environ if environ is None else environ
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                value = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {token_file}: cannot be read ({type(exc).__name__})") from None
        if not value:
            raise ValueError(f"--token-file {token_file}: the file is empty")
        return value
    if token is not None:
        return token
    return env.get("IJTORCH_SERVER_TOKEN") or env.get("IJTORCH_TOKEN") or None


LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]", "localhost.localdomain")


def _host_name(value: str) -> str:
    """``Host`` / ``Origin`` authority without port, lower case (``[::1]:8765`` -> ``::1``)."""
    value = value.strip().lower()
    if "://" in value:
        value = value.split("://", 1)[1].split("/", 1)[0]
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class HostCheck:
    """DNS-rebinding guard: on a loopback server, ``Host`` (and ``Origin`` when a browser sends one)
    must name this machine (localhost, 127.0.0.0/8, ::1) or one of ``allowed``. A server bound to
    another address checks only ``allowed`` when given (it needs a token anyway)."""

    def __init__(self, bind_host: str, allowed: tuple[str, ...] = ()) -> None:
        self.allowed = {_host_name(a) for a in allowed if a}
        self.enforce = is_loopback(bind_host) or bool(self.allowed)
        self.local_ok = is_loopback(bind_host)

    def ok_name(self, name: str) -> bool:
        if name in self.allowed or "*" in self.allowed:
            return True
        return self.local_ok and (name in LOCAL_HOST_NAMES or is_loopback(name))

    def check(self, host: str | None, origin: str | None) -> str | None:
        """None when the request may pass, else the reason (for a 403)."""
        if not self.enforce:
            return None
        if not host or not self.ok_name(_host_name(host)):
            return "the Host header does not name this server (allowed: localhost names; see --allow-host)"
        if origin and origin != "null" and not self.ok_name(_host_name(origin)):
            return "requests from a web page of another origin are refused (see --allow-host)"
        if origin == "null":
            return "requests from a web page of another origin are refused (see --allow-host)"
        return None


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
            raise ValueError("model: give a registered model name (letters, digits, '.', '-', '_'; "
                             "no paths or '..')")
        if name not in self._paths and time.monotonic() - self._read_at > min(self.refresh_s, 1.0):
            self._refresh()
        if name not in self._paths:
            raise LookupError(f"model={name!r} is not registered on this server; registered: {self.names()}")
        return self._paths[name]
