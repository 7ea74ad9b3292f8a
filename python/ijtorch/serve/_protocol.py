"""uvicorn's h11 protocol with a deadline for request headers and a way for the app to drop a connection.

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) and bounds the size of the
request head (``h11_max_incomplete_event_size``), but a connection that sends half a request line
and then nothing is kept forever. :class:`DeadlineH11Protocol` closes a connection whose request
head is not complete ``header_timeout`` seconds after its first byte (or after the connection was
made). It also puts ``scope["ijtorch.abort"]`` into every request scope: a callable that drops the
connection at once (``transport.abort()``), discarding what is still buffered for a client that
never reads — ``close()`` would keep that buffer until the client reads it.

Used as ``uvicorn.Config(http=DeadlineH11Protocol.with_timeout(10.0))``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DeadlineH11Protocol"]


class DeadlineH11Protocol(H11Protocol):
    header_timeout: float = 10.0

    @classmethod
    def with_timeout(cls, seconds: float) -> type["DeadlineH11Protocol"]:
        return type("DeadlineH11Protocol", (cls,), {"header_timeout": float(seconds)})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        inner = self.app

        async def app(scope: dict, receive: Any, send: Any) -> None:
            scope["ijtorch.abort"] = self.abort
            await inner(scope, receive, send)

        self.app = app

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_request():  # still waiting for a complete request head
            self.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing at all is dropped too

    def data_received(self, data: bytes) -> None:
        if not self._in_request():
            self._arm()  # bytes of a new request head
        super().data_received(data)
        if self._in_request():
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # idle now: uvicorn's keep-alive timeout applies until the next byte
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
