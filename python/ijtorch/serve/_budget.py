"""Admission by cost: a memory ledger, per-client slots, and the estimated cost of a request.

Every byte the server holds for a client is reserved in one :class:`Ledger` against
``--max-memory-gb``: request bodies while they arrive, each admitted request's estimated working
memory (from its shape, dtype, scale and model, before it runs) until its reply has been sent,
and the reply itself while a slow client reads it. A request whose estimate alone exceeds the
budget, or whose model would see more than ``--max-pixels`` pixels, gets 413; one that does not fit
next to the work already admitted gets 503 + ``Retry-After``.

The factors are measured, rounded up: star-convex segmentation of a 2D image needs about 200 bytes
per pixel the network sees (input, normalised tiles, probability and 32 distance maps, labels;
``scale`` multiplies the pixels by ``scale**2``); test-time augmentation keeps a second set of
maps. They are estimates: their purpose is to refuse the request that would take gigabytes before
it takes them, not to account for every byte.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["Ledger", "Admission", "Ticket", "QueueFull", "TooLarge", "Cost", "estimate", "BYTES_PER_PIXEL",
           "default_memory_bytes"]

#: Working bytes per pixel seen by the model, by route (see the module docstring).
BYTES_PER_PIXEL = {"segment": 200, "normalize": 16, "restore": 64, "classify": 24,
                   "track": 240, "imagej": 240}
FIXED_BYTES = 8 << 20  # per request: Python objects, small temporaries


class QueueFull(Exception):
    """No room now (HTTP 503 + Retry-After): too many requests, or the memory budget is in use."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(Exception):
    """A request this server will never take (HTTP 413)."""


def default_memory_bytes() -> int:
    """Half of this machine's memory (``/proc/meminfo``; 8 GiB when it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


class Ledger:
    """Bytes reserved against a limit (thread-safe). ``peak`` is the largest total ever reserved."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.reserved = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_reserve(self, n: int) -> bool:
        with self._lock:
            if n > 0 and self.reserved + n > self.limit:
                return False
            self.reserved += n
            self.peak = max(self.peak, self.reserved)
            return True

    def release(self, n: int) -> None:
        with self._lock:
            self.reserved -= n


class Ticket:
    """One admitted request: a slot (of its client's share) and reserved bytes; :meth:`release` is idempotent."""

    def __init__(self, admission: "Admission", client: str, nbytes: int) -> None:
        self._admission, self.client, self.nbytes = admission, client, nbytes
        self._slot = True
        self._lock = threading.Lock()

    def free_slot(self) -> None:
        """The work is done (the reply may still be sending): the slot goes back, the bytes stay."""
        with self._lock:
            if self._slot:
                self._slot = False
                self._admission._free_slot(self.client)

    def resize(self, nbytes: int) -> None:
        """Keep ``nbytes`` reserved instead (e.g. the reply's size once the work is done)."""
        with self._lock:
            self._admission.ledger.release(self.nbytes - nbytes)
            self.nbytes = nbytes

    def release(self) -> None:
        self.free_slot()
        self.resize(0)


class Admission:
    """Requests queued or running, at most ``limit`` in all and ``per_client`` per client address,
    each with its estimated bytes reserved in ``ledger``."""

    def __init__(self, limit: int, ledger: Ledger | None = None, per_client: int | None = None) -> None:
        if limit < 1:
            raise ValueError(f"max_queue={limit!r}: expected an integer >= 1")
        self.limit = int(limit)
        self.per_client = int(per_client) if per_client else self.limit
        self.ledger = ledger or Ledger(1 << 62)
        self._active = 0
        self._by_client: dict[str, int] = {}
        self._lock = threading.Lock()
        self.rejected = 0
        self.admitted = 0  # ever admitted: lets an idle-time task see that work happened since it last looked

    @property
    def active(self) -> int:
        return self._active

    def acquire(self, client: str = "", nbytes: int = 0, retry_after: int = 1) -> Ticket:
        """A ticket for one request, or QueueFull (503) / TooLarge (413)."""
        if nbytes > self.ledger.limit:
            self.rejected += 1
            raise TooLarge(f"this request needs about {_gib(nbytes)} of memory, more than this server's whole "
                           f"budget of {_gib(self.ledger.limit)} (--max-memory-gb); send a smaller image or scale")
        with self._lock:
            if self._active >= self.limit:
                self.rejected += 1
                raise QueueFull(f"the server is busy: {self._active} requests queued or running (limit "
                                f"{self.limit}); retry in {retry_after} s", retry_after)
            if self._by_client.get(client, 0) >= self.per_client:
                self.rejected += 1
                raise QueueFull(f"this client already has {self.per_client} requests queued or running (the most "
                                f"one client may hold, --max-per-client); retry in {retry_after} s", retry_after)
            if not self.ledger.try_reserve(nbytes):
                self.rejected += 1
                raise QueueFull(f"the server's memory budget is in use ({_gib(self.ledger.reserved)} of "
                                f"{_gib(self.ledger.limit)} reserved; this request needs about {_gib(nbytes)}); "
                                f"retry in {retry_after} s", retry_after)
            self._active += 1
            self._by_client[client] = self._by_client.get(client, 0) + 1
            self.admitted += 1
        return Ticket(self, client, nbytes)

    def _free_slot(self, client: str) -> None:
        with self._lock:
            self._active -= 1
            left = self._by_client.get(client, 1) - 1
            if left > 0:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)

    def full(self) -> bool:
        return self._active >= self.limit


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 28 else f"{n / (1 << 20):.0f} MiB"


@dataclass(frozen=True)
class Cost:
    pixels: int  # pixels the model sees (after scale)
    nbytes: int  # estimated peak working memory, the body and the reply included


PLANE_ROUTES = ("segment", "restore", "track", "imagej")  # work one T frame at a time


def estimate(route: str, shape: tuple[int, ...], axes: str, itemsize: int, *, body_bytes: int = 0,
             scale: float = 1.0, tta: bool = False, channel_picked: bool = True) -> Cost:
    """The cost of one request on ``route`` for an array of ``shape``/``axes``.

    Model routes (:data:`PLANE_ROUTES`) work one time point at a time: the working memory is that
    of one ``(Z)YX`` plane or volume at ``scale`` (``Cost.pixels``, checked against
    ``--max-pixels``), the reply that of the whole array. ``channel_picked``: only one channel of a
    ``C`` axis is processed.
    """
    dims = dict(zip(axes, shape))
    pixels = math.prod(shape) if shape else 1
    if channel_picked and "C" in dims:
        pixels //= max(1, dims["C"])
    plane = pixels
    if route in PLANE_ROUTES and "T" in dims:
        plane //= max(1, dims["T"])
    model_pixels = int(math.ceil(plane * float(scale) ** 2))
    work = model_pixels * BYTES_PER_PIXEL.get(route, 200) * (2 if tta else 1)
    reply = pixels * 8  # a label map / float image at the input's size, and its encoded copy
    return Cost(pixels=model_pixels if route in PLANE_ROUTES else 0,
                nbytes=int(FIXED_BYTES + body_bytes + work + reply + pixels * itemsize))


def describe_pixels(cost: Cost, shape: Any, scale: float, limit: int) -> str:
    at = f" at scale {scale:g}" if scale != 1 else ""
    return (f"the image {list(shape)}{at} means {cost.pixels} pixels for the model; this server takes at most "
            f"{limit} (--max-pixels)")
