"""The ijtorch model server: an ASGI app (Starlette) serving the task functions to many clients.

Routes (binary bodies use the format of :mod:`ijtorch.serve._wire`; JSON elsewhere):

=====================  ======  =============================================================
``/health``            GET     liveness (no token needed; as ``/health/live``)
``/health/live``       GET     the process answers (no token needed)
``/health/ready``      GET     200 when the device works, a model is registered, the queue has room
                               and the server is not draining; else 503 with the failing checks
``/metrics``           GET     JSON: queue, memory budget, latency percentiles, batch sizes, RSS, GPU
                               memory; Prometheus text for ``Accept: text/plain`` / openmetrics
                               or ``/metrics/prometheus``
``/models``            GET     registered model names
``/segment``           POST    image → label map (dynamic batching for one-tile ``YX`` images)
``/normalize``         POST    image → float32 percentile-normalised image
``/classify``          POST    ``(N, C, Y, X)`` crops → classes and probabilities (dynamic batching)
``/restore``           POST    image → restored float32 image
``/jobs/segment``      POST    202 + job id: segmentation as a cancellable job with progress
``/jobs/track``        POST    202 + job id: tracking (segment every frame, link)
``/jobs/{id}``         GET     status and progress; ``DELETE`` cancels
``/jobs/{id}/result``  GET     the finished job's reply
``/imagej/commands``   GET     remote-capable ImageJ commands (dialog specs, inputs) and macro functions
``/imagej/command``    POST    run an ImageJ command for a remote Fiji (``IjtorchRemote``)
``/imagej/function``   POST    run an ``Ext.ijtorch…`` macro function for a remote Fiji
=====================  ======  =============================================================

Status codes: 400 malformed message, 401 missing/wrong token, 403 a ``Host``/``Origin`` that does
not name this server (DNS rebinding), 404 unknown model or job, 408 request body not received in
time, 409 job not finished, 410 job cancelled or its result expired, 413 body over
``--max-request-mb`` or a request that needs more than ``--max-pixels`` / ``--max-memory-gb``, 415
wrong media type, 422 invalid parameters, shape, dtype, axes or NaN/inf values, 500 the model
failed (that request only), 503 + ``Retry-After`` when the queue, the client's share of it or the
memory budget is full, 504 the request's deadline (``X-Request-Timeout``) passed.

A request takes a slot only once its body has arrived and been validated: uploads hold only the
bytes received so far (counted in the memory budget) and are dropped when they are slower than
``--body-timeout``. Error messages are short, never repeat the client's input at length and never
show server paths. Every reply carries ``X-Request-ID`` (the client's, when it sent a plain one);
the access log names it. A client that hangs up stops its work: a queued request is dropped, a
running tiled segmentation or restoration stops at its next tile. Channels are numbered from 1, as
in ImageJ.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import IjtorchError, ModelError
from ._budget import Cost, Ledger, QueueFull, Ticket, TooLarge, default_memory_bytes, describe_pixels, estimate
from ._jobstore import JobStore
from ._security import HostCheck, ModelNames, token_matches
from ._state import Admission, JobManager, Metrics, gpu_memory, release_free_memory, rss_bytes
from ._wire import MEDIA_TYPE, WireError, decode, encode
from .requests import (ClassifyRequest, HTTPError, ImageJFunctionRequest, ImageJRequest, NormalizeRequest,
                       RestoreRequest, SegmentRequest, TrackRequest, client_message, parse_request,
                       request_calibration, request_image, require_finite)
from .batcher import DynamicBatcher

__all__ = ["ServerConfig", "create_app", "HTTPError", "client_message"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server (the CLI flags)."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_queue: int = 64
    max_request_mb: float = 256.0
    max_batch: int = 8
    batch_wait_ms: float = 0.0  # extra wait for batch company while the pipeline is busy, never when idle
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default
    max_memory_gb: float | None = None  # None: half of this machine's memory
    max_pixels: int = 1 << 26  # pixels the model sees in one plane/volume, after scale
    max_per_client: int | None = None  # None: three quarters of max_queue
    header_timeout: float = 10.0  # seconds for a request head (enforced by the protocol, _protocol.py)
    body_timeout: float = 60.0  # seconds for a whole request body
    send_timeout: float = 60.0  # seconds a reply may wait for a client that does not read
    request_timeout: float = 600.0  # default and largest X-Request-Timeout
    allow_hosts: tuple[str, ...] = ()  # Host/Origin names accepted besides localhost names
    state_dir: str | None = None  # job database and results; None: a temporary folder (not kept)
    job_ttl_h: float = 24.0
    job_results_mb: float = 2048.0


def _binary(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, status: int = 200) -> Response:
    return Response(encode(header, arrays), status_code=status, media_type=MEDIA_TYPE)


# ------------------------------------------------------------------------------------- requests
class BodyTimeout(Exception):
    """The request body did not arrive within ``--body-timeout`` (HTTP 408)."""


class ClientGone(Exception):
    """The client hung up or stopped reading its reply."""


_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class Ctx:
    """One request's context: id, client, cancellation (client gone or deadline passed), uploads."""

    def __init__(self, rid: str, client: str, timeout: float) -> None:
        self.rid, self.client, self.timeout = rid, client, timeout
        self.cancel = threading.Event()
        self.reason: str | None = None  # "disconnect" or "deadline"
        self.abandoned_at: float | None = None
        self.work: asyncio.Task | None = None
        self.body_done = False
        self.uploaded = 0  # bytes reserved for the body

    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason, self.abandoned_at = reason, time.monotonic()
            self.cancel.set()
            if self.work is not None and not self.work.done():
                self.work.cancel()


class Held:
    """An ASGI response that keeps its ticket's bytes reserved while it is being sent (the work's
    slot is free already), and releases them when sent or when the client is gone."""

    def __init__(self, response: Response, ticket: Ticket | None) -> None:
        self.response, self.ticket = response, ticket
        if ticket is not None:
            ticket.free_slot()
            ticket.resize(len(response.body or b""))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            if self.ticket is not None:
                self.ticket.release()


# ------------------------------------------------------------------------------------- server
class Server:
    """State shared by the routes: model names, executors, batcher, admission, jobs, metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.models = ModelNames()
        budget = int(config.max_memory_gb * (1 << 30)) if config.max_memory_gb else default_memory_bytes()
        self.ledger = Ledger(budget)
        per_client = config.max_per_client or max(1, -(-3 * config.max_queue // 4))
        self.admission = Admission(config.max_queue, self.ledger, per_client)
        self.infer = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-infer")
        # per-image post-processing (NMS, labels) of batched requests: overlaps the next forward pass
        self.post = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-post")
        self.jobs_executor = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-jobs")
        # one batcher for every batched route: its key's first entry names the route's batch function
        self.batcher = DynamicBatcher(self._run_batch, self.infer, finish_executor=self.post,
                                      max_batch=config.max_batch, wait_s=config.batch_wait_ms / 1000)
        if config.state_dir:
            state = config.state_dir
        else:
            self._tmp_state = tempfile.TemporaryDirectory(prefix="ijtorch-serve-")
            state = self._tmp_state.name
        self.store = JobStore(state, ttl_s=config.job_ttl_h * 3600, max_bytes=int(config.job_results_mb * (1 << 20)))
        self.jobs = JobManager(self.jobs_executor, self.admission, self.store)
        self.metrics = Metrics()
        self.hosts = HostCheck(config.host, config.allow_hosts)
        self.max_bytes = int(config.max_request_mb * (1 << 20))
        self._loaded: dict[tuple[str, int], Any] = {}
        self.device_status: str | None = None  # None: not checked yet; "ok"; or why it is unusable
        self.draining = False

    # ---- readiness
    def check_device(self) -> None:
        """Whether ``--device`` can hold a tensor (runs once, in a thread, at start-up)."""
        try:
            import torch

            from ..models.device import resolve_device

            torch.zeros(1, device=resolve_device(self.config.device)).add_(1)
            self.device_status = "ok"
        except Exception as exc:  # noqa: BLE001 - reported by /health/ready
            self.device_status = client_message(f"device {self.config.device!r} is not usable: "
                                                f"{type(exc).__name__}: {exc}")[:200]

    def readiness(self) -> dict[str, Any]:
        try:
            n_models = len(self.models.names())
        except Exception:  # noqa: BLE001
            n_models = 0
        checks = {"device": self.device_status or "checking",
                  "models": "ok" if n_models else "no model is registered",
                  "queue": "full" if self.admission.full() else "ok",
                  "memory": "ok" if self.ledger.reserved < self.ledger.limit * 0.95 else "budget in use",
                  "draining": "yes: shutting down" if self.draining else "no"}
        ready = all(v in ("ok", "no") for v in checks.values())
        return {"ready": ready, "checks": checks}

    # ---- admission
    def admit(self, ctx: Ctx, cost: Cost, shape: Any, scale: float = 1.0, *, extra_bytes: int = 0) -> Ticket:
        if cost.pixels > self.config.max_pixels:
            raise HTTPError(413, describe_pixels(cost, shape, scale, self.config.max_pixels))
        return self.admission.acquire(ctx.client, cost.nbytes + extra_bytes)

    async def run(self, ctx: Ctx, fn: Callable[[], Any], executor: Any = None) -> Any:
        """``fn()`` on the inference thread (or ``executor``); dropped unrun when the request was
        cancelled while it queued; its CPU time is counted (as abandoned after a cancellation)."""
        metrics = self.metrics

        def work() -> Any:
            if ctx.cancelled():
                raise InterruptedError("the request was cancelled before it ran")
            c0, t0 = time.thread_time(), time.monotonic()
            try:
                return fn()
            finally:
                cpu, end = time.thread_time() - c0, time.monotonic()
                metrics.work_cpu.inc(cpu)
                if ctx.abandoned_at is not None:
                    wall = end - t0
                    metrics.abandoned_cpu.inc(cpu * (min(1.0, (end - ctx.abandoned_at) / wall) if wall > 0 else 1.0))

        return await asyncio.get_running_loop().run_in_executor(executor or self.infer, work)

    # ---- models
    def model_path(self, name: Any) -> str:
        try:
            return self.models.resolve(name)
        except LookupError as exc:
            raise HTTPError(404, str(exc)) from None
        except ValueError as exc:
            raise HTTPError(422, str(exc)) from None

    def load(self, path: str) -> Any:
        """The model in ``path``, loaded once (again only when its config changes on disk)."""
        from ..models.store import CONFIG_NAME, load_model

        key = (path, os.stat(os.path.join(path, CONFIG_NAME)).st_mtime_ns)
        model = self._loaded.get(key)
        if model is None:
            model = load_model(path, device=self.config.device)
            self._loaded = {k: v for k, v in self._loaded.items() if k[0] != path}
            self._loaded[key] = model
        return model

    async def load_async(self, path: str) -> Any:
        """:meth:`load` without waiting for the inference thread when the model is loaded already."""
        from ..models.store import CONFIG_NAME

        key = (path, os.stat(os.path.join(path, CONFIG_NAME)).st_mtime_ns)
        if key in self._loaded:
            return self._loaded[key]
        return await asyncio.get_running_loop().run_in_executor(self.infer, self.load, path)

    # ---- batches (on the inference thread)
    def _run_batch(self, key: tuple, payloads: list) -> list:
        from ._batched import classify_batch, forward_maps

        c0 = time.thread_time()
        try:
            route, path = key[0], key[1]
            if route == "segment":
                return forward_maps(self.load(path), payloads)  # an exception reaches every request of the batch
            if route == "classify":
                return classify_batch(path, payloads, self.config.device)
            raise RuntimeError(f"internal error: no batch function for {route!r}")
        finally:
            self.metrics.work_cpu.inc(time.thread_time() - c0)

    # ---- segmentation
    def segment_cost(self, data: np.ndarray, axes: str, p: Any, body_bytes: int = 0) -> Cost:
        return estimate("segment", data.shape, axes, data.dtype.itemsize, scale=p.scale,
                        tta=p.test_time_augmentation, body_bytes=body_bytes)

    def segment_options(self, data: np.ndarray, axes: str, p: Any) -> dict[str, Any]:
        """``segment()``'s arguments for ``SegmentParams`` ``p``, as the command translates them (1-based
        channel, 0 = tuned / the model's default), the model as its registered folder; 422 for what
        cannot run."""
        from ..commands.segment import segment_options

        from ..models.auto import is_auto

        options = segment_options(p, axes)
        options["model"] = p.model if is_auto(p.model) else self.model_path(p.model)
        tile = options["tile_size"] or 512
        if options["overlap"] is not None and options["overlap"] >= tile:
            raise HTTPError(422, f"overlap={p.overlap} must be smaller than tile_size={tile}")
        _check_channel(data, axes, options["channel"])
        return options

    async def segment(self, ctx: Ctx, data: np.ndarray, axes: str, p: Any) -> Any:
        from dataclasses import replace

        from ..models.auto import is_auto
        from ..tasks.segment import _pick_channel, choose_auto_model, segment
        from ._batched import batchable, instances

        options = self.segment_options(data, axes, p)
        choice = None
        if is_auto(options["model"]):  # chosen first, so that the chosen model's requests still share batches
            choice = await self.run(ctx, lambda: choose_auto_model(
                data, axes, channel=options["channel"], rgb=options["rgb"], device=self.config.device, scale=p.scale))
            options["model"] = choice.path
        path = options["model"]
        plane, plane_axes = _pick_channel(data, axes, options["channel"])
        model = await self.load_async(path)
        if (plane_axes == "YX" and not p.test_time_augmentation and p.scale == 1
                and batchable(model, plane.shape, options["tile_size"] or 512)):
            key = ("segment", path, plane.shape, str(plane.dtype))
            result = await self.batcher.submit(key, plane, finish=lambda maps: instances(
                model, maps, options["prob_threshold"], options["nms_threshold"], path, options["min_confidence"]))
        else:
            result = await self.run(ctx, lambda: segment(data, axes, **options, device=self.config.device,
                                                         cancel=ctx.cancelled))
        return replace(result, model_choice=choice.message) if choice is not None else result

    # ---- classification
    async def classify(self, ctx: Ctx, images: np.ndarray, model: str) -> dict[str, Any]:
        """``classify(images, model=...)``; small requests for one model and item shape share one call."""
        from ..tasks.classify import classify
        from ._batched import CLASSIFY_BATCHABLE_ITEMS

        path = self.model_path(model)
        if 1 <= len(images) <= CLASSIFY_BATCHABLE_ITEMS:
            out = await self.batcher.submit(("classify", path, images.shape[1:], images.dtype.str), images)
            if "shift_score" in out:  # the joint call's shift report covered the other requests' items too
                from ..tasks.classify import shift_of_items

                out = {**out, "shift": shift_of_items(await self.load_async(path), out["shift_score"],
                                                      name=os.path.basename(path))}
            return out
        return await self.run(ctx, lambda: classify(images, model=path, device=self.config.device))


def _check_channel(data: np.ndarray, axes: str, channel: int | None) -> None:
    """422 when the (0-based) ``channel`` the command's translation gives does not fit the image."""
    from ..tasks.segment import _pick_channel

    try:  # on a stand-in with the image's channel count only: nothing is copied
        _pick_channel(np.empty(tuple(n if a == "C" else 1 for a, n in zip(axes, data.shape)), np.uint8), axes, channel)
    except ValueError as exc:
        raise HTTPError(422, _one_based(str(exc))) from None


def _one_based(message: str) -> str:
    """_pick_channel speaks of 0-based indices; the server's clients count channels from 1."""
    message = re.sub(r"channel=(\d+)", lambda m: f"channel={int(m.group(1)) + 1}", message)
    return re.sub(r"\b0\.\.(\d+)", lambda m: f"1..{int(m.group(1)) + 1}", message)


def _segment_reply(result: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return ({"axes": result.axes, "n_objects": result.n_objects, "model": result.model,
             "prob_threshold": result.prob_threshold, "nms_threshold": result.nms_threshold,
             "seconds": result.seconds, "device": result.device,
             "objects_per_plane": list(result.objects_per_plane),
             "shift_score": getattr(result, "shift_score", None), "shift_threshold": getattr(result, "shift_threshold", None),
             "shift_warning": getattr(result, "shift_warning", None), "shift_message": getattr(result, "shift_message", ""),
             "model_choice": getattr(result, "model_choice", ""),
             "confidence": None if getattr(result, "confidence", None) is None else
             [round(float(c), 4) for c in result.confidence]}, {"labels": result.labels})


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit() or len(length) > 18:
            raise HTTPError(400, "Content-Length is not a number")
        if int(length) > limit:
            raise HTTPError(413, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes "
                                 "(--max-request-mb)", {"Connection": "close"})
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != MEDIA_TYPE:
        shown = repr(ctype[:40]) if ctype else "none"
        raise HTTPError(415, f"Content-Type must be {MEDIA_TYPE} (4-byte header length, JSON header, raw "
                             f"little-endian arrays), got {shown}", {"Connection": "close"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-request-mb)",
                            {"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


def _error_reply(exc: BaseException) -> HTTPError:
    """The reply for an exception raised by a task or model."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, QueueFull):
        return HTTPError(503, str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TooLarge):
        return HTTPError(413, str(exc))
    if isinstance(exc, BodyTimeout):
        return HTTPError(408, str(exc), {"Connection": "close"})
    if isinstance(exc, WireError):
        return HTTPError(400, f"malformed message: {exc}")
    if isinstance(exc, ModelError):
        return HTTPError(500, f"the model failed: {exc}")
    if isinstance(exc, (ValueError, TypeError, IjtorchError, ArithmeticError, IndexError, KeyError)):
        return HTTPError(422, str(exc) if not isinstance(exc, KeyError) else f"missing entry {exc}")
    if isinstance(exc, InterruptedError):
        return HTTPError(409, f"cancelled: {exc}")
    if isinstance(exc, (RecursionError, UnicodeError)):
        return HTTPError(400, f"malformed message: {type(exc).__name__}")
    log.warning("request failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
    return HTTPError(500, f"the model failed: {type(exc).__name__}: {exc}")


def _error_response(err: HTTPError, rid: str = "") -> JSONResponse:
    message = client_message(err.message)
    body = {"error": message, "status": err.status}
    if rid:
        body["request_id"] = rid
    return JSONResponse(body, err.status, headers=err.headers)


def create_app(config: ServerConfig | None = None) -> Starlette:
    """The ASGI application for ``config`` (run it with uvicorn; see :mod:`ijtorch.serve`)."""
    config = config or ServerConfig()
    srv = Server(config)

    def route(fn: Callable) -> Callable:
        async def endpoint(request: Request) -> Any:
            ctx: Ctx = request.scope.get("ijtorch.ctx") or Ctx("", "", config.request_timeout)
            ctx.work = asyncio.ensure_future(fn(request, ctx))
            timer = asyncio.get_running_loop().call_later(ctx.timeout, ctx.stop, "deadline")
            try:
                return await ctx.work
            except asyncio.CancelledError:
                if ctx.reason == "deadline":
                    return _error_response(HTTPError(504, f"the request's deadline of {ctx.timeout:g} s passed "
                                                          "before its answer was ready (X-Request-Timeout)"), ctx.rid)
                if ctx.reason == "disconnect":
                    return Response(b"", status_code=499)  # nobody reads it
                raise
            except ClientDisconnect:
                ctx.stop("disconnect")
                return Response(b"", status_code=499)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
                if ctx.reason == "disconnect":
                    return Response(b"", status_code=499)
                return _error_response(_error_reply(exc), ctx.rid)
            finally:
                timer.cancel()

        return endpoint

    async def read(request: Request, ctx: Ctx) -> tuple[dict[str, Any], dict[str, np.ndarray], int]:
        body = await _read_body(request, srv.max_bytes)
        ctx.body_done = True
        receive = request.receive

        async def watch() -> None:  # after the body, the next message is the client hanging up
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    ctx.stop("disconnect")
                    return

        watcher = asyncio.ensure_future(watch())
        if ctx.work is not None:
            ctx.work.add_done_callback(lambda _: watcher.cancel())
        header, arrays = decode(body)
        require_finite(arrays)
        return header, arrays, len(body)

    def held(ticket: Ticket, response: Response) -> Held:
        return Held(response, ticket)

    # ---- info
    async def health(request: Request, ctx: Ctx) -> Response:
        from .. import __version__

        return JSONResponse({"status": "ok", "version": __version__})

    async def ready(request: Request, ctx: Ctx) -> Response:
        out = srv.readiness()
        return JSONResponse(out, 200 if out["ready"] else 503)

    def _gauges() -> None:
        g = srv.metrics.gauges
        g["queue_active"].set(srv.admission.active)
        g["queue_limit"].set(srv.admission.limit)
        g["memory_reserved_bytes"].set(srv.ledger.reserved)
        g["memory_budget_bytes"].set(srv.ledger.limit)
        g["rss_bytes"].set(rss_bytes())
        g["jobs_active"].set(srv.jobs.active())
        g["ready"].set(int(srv.readiness()["ready"]))

    async def metrics(request: Request, ctx: Ctx) -> Response:
        _gauges()
        accept = request.headers.get("accept", "")
        if request.url.path.endswith("/prometheus") or request.query_params.get("format") == "prometheus" or (
                ("text/plain" in accept or "openmetrics" in accept) and "json" not in accept):
            from prometheus_client import CONTENT_TYPE_LATEST

            return Response(srv.metrics.prometheus(), media_type=CONTENT_TYPE_LATEST)
        out = srv.metrics.as_dict()
        out.update(queue={"active": srv.admission.active, "limit": srv.admission.limit,
                          "per_client": srv.admission.per_client,
                          "batcher_waiting": len(srv.batcher), "rejected": srv.admission.rejected},
                   memory={"reserved_bytes": srv.ledger.reserved, "peak_reserved_bytes": srv.ledger.peak,
                           "budget_bytes": srv.ledger.limit, "max_pixels": config.max_pixels},
                   batching={"max_batch": srv.batcher.max_batch, **srv.batcher.stats.as_dict()},
                   jobs=srv.jobs.counts(), rss_bytes=rss_bytes(), gpu=gpu_memory())
        return JSONResponse(out)

    async def models(request: Request, ctx: Ctx) -> Response:
        return JSONResponse({"models": srv.models.names()})

    # ---- tasks
    async def segment_route(request: Request, ctx: Ctx) -> Any:
        header, arrays, _ = await read(request, ctx)
        req = parse_request(SegmentRequest, header)
        data, axes = request_image(arrays, req.axes)
        p = req.to_params()
        ticket = srv.admit(ctx, srv.segment_cost(data, axes, p), data.shape, p.scale)
        try:
            return held(ticket, _binary(*_segment_reply(await srv.segment(ctx, data, axes, p))))
        except BaseException:
            ticket.release()
            raise

    async def normalize_route(request: Request, ctx: Ctx) -> Any:
        from ..commands.normalize import normalize_options
        from ..core.normalize import normalize

        header, arrays, _ = await read(request, ctx)
        req = parse_request(NormalizeRequest, header)
        p = req.to_params()
        data, axes = request_image(arrays, req.axes)
        ticket = srv.admit(ctx, estimate("normalize", data.shape, axes, data.dtype.itemsize, channel_picked=False),
                           data.shape)
        try:
            out = await srv.run(ctx, lambda: normalize(data, axes, **normalize_options(p)))
            return held(ticket, _binary({"axes": axes}, {"image": out}))
        except BaseException:
            ticket.release()
            raise

    async def classify_route(request: Request, ctx: Ctx) -> Any:
        header, arrays, _ = await read(request, ctx)
        req = parse_request(ClassifyRequest, header)
        if set(arrays) != {"images"} or arrays["images"].ndim not in (4, 5):
            raise HTTPError(422, "expected one array 'images' of shape (N, C, Y, X) or (N, C, Z, Y, X)")
        images = np.asarray(arrays["images"])
        if 0 in images.shape:
            raise HTTPError(422, f"array 'images' has an empty axis: shape {list(images.shape)}")
        if images.dtype.kind not in "iuf":
            raise HTTPError(422, f"array 'images' has dtype {images.dtype}; expected an integer or float image")
        ticket = srv.admit(ctx, estimate("classify", images.shape, "", images.dtype.itemsize), images.shape)
        try:
            out = await srv.classify(ctx, images, req.to_params().model)
            shift = out["shift"]  # the items' dataset-shift report; per item scores in 'shift_score'
            scores = {"shift_score": np.asarray(out["shift_score"], np.float64)} if "shift_score" in out else {}
            return held(ticket, _binary({"classes": list(out["classes"]), "class": [str(c) for c in out["class"]],
                                         "shift_score": shift.score, "shift_threshold": shift.threshold,
                                         "shift_warning": shift.warning, "shift_message": shift.message},
                                        {"class_index": out["class_index"], "probabilities": out["probabilities"],
                                         "confidence": np.asarray(out["confidence"]), **scores}))
        except BaseException:
            ticket.release()
            raise

    async def restore_route(request: Request, ctx: Ctx) -> Any:
        from ..commands.restore import restore_options
        from ..tasks.restore import restore

        header, arrays, _ = await read(request, ctx)
        req = parse_request(RestoreRequest, header)
        data, axes = request_image(arrays, req.axes)
        p = req.to_params()
        options = restore_options(p, axes)  # as the ijtorch Restore command translates them
        options["model"] = srv.model_path(p.model)
        _check_channel(data, axes, options["channel"])
        ticket = srv.admit(ctx, estimate("restore", data.shape, axes, data.dtype.itemsize), data.shape)
        try:
            res = await srv.run(ctx, lambda: restore(data, axes, **options, device=config.device,
                                                     cancel=ctx.cancelled))
            maps = {k: v for k, v in (("uncertainty", res.uncertainty), ("error_map", res.error_map)) if v is not None}
            return held(ticket, _binary({"axes": res.axes, "model": res.model, "shift_warning": res.shift_warning,
                                         "seconds": res.seconds}, {"restored": res.restored, **maps}))
        except BaseException:
            ticket.release()
            raise

    # ---- jobs
    def _job_reply(job: Any) -> Response:
        return JSONResponse({**job.as_dict(), "status_url": f"/jobs/{job.id}", "result_url": f"/jobs/{job.id}/result"},
                            202)

    async def segment_job(request: Request, ctx: Ctx) -> Response:
        from ..tasks.segment import segment

        header, arrays, nbody = await read(request, ctx)
        req = parse_request(SegmentRequest, header)
        data, axes = request_image(arrays, req.axes)
        p = req.to_params()
        options = srv.segment_options(data, axes, p)
        cost = srv.segment_cost(data, axes, p, body_bytes=nbody)
        if cost.pixels > config.max_pixels:
            raise HTTPError(413, describe_pixels(cost, data.shape, p.scale, config.max_pixels))

        def run(progress: Callable, cancelled: Callable[[], bool]) -> bytes:
            result = segment(data, axes, **options, device=config.device, progress=progress, cancel=cancelled)
            return encode(*_segment_reply(result))

        return _job_reply(srv.jobs.submit("segment", run, client=ctx.client, nbytes=cost.nbytes))

    async def track_job(request: Request, ctx: Ctx) -> Response:
        from ..commands.track import track_options
        from ..tasks.segment import segment
        from ..tasks.track import n_tracklets, n_tracks, track_statistics
        from ..tasks.linking import track_labels

        header, arrays, nbody = await read(request, ctx)
        req = parse_request(TrackRequest, header)
        data, axes = request_image(arrays, req.axes)
        p = req.to_params()
        if "T" not in axes:
            raise HTTPError(422, f"axes={axes!r}: tracking needs a time axis T")
        if p.labels and "C" in axes:
            raise HTTPError(422, f"axes={axes!r}: a label stack has no channel axis")
        options = track_options(p, axes)  # as the ijtorch Track command translates them
        path = None if p.labels else srv.model_path(p.model)
        channel, params = options["channel"], options["params"]
        if not p.labels:
            _check_channel(data, axes, channel)
        calibration = request_calibration(req.calibration)
        cost = estimate("track", data.shape, axes, data.dtype.itemsize, body_bytes=nbody)
        if cost.pixels > config.max_pixels:
            raise HTTPError(413, describe_pixels(cost, data.shape, 1.0, config.max_pixels))

        def run(progress: Callable, cancelled: Callable[[], bool]) -> bytes:
            labels, label_axes, intensity = data, axes, None
            if not p.labels:  # as track_movie (on the server's device), with cancellation between frames
                seg = segment(data, axes, model=path, channel=channel, device=config.device,
                              progress=progress, cancel=cancelled)
                labels, label_axes = seg.labels, seg.axes
                intensity = data if "C" not in axes else np.take(data, channel or 0, axis=axes.index("C"))
            if cancelled():
                raise InterruptedError("tracking cancelled")
            tracks = track_labels(labels, label_axes, intensity=intensity, calibration=calibration, params=params,
                                  progress=progress)
            stats = track_statistics(tracks)
            # tracks as TrackMate counts them (a dividing cell and its daughters are one track)
            head = {"axes": "TZYX" if tracks.ndim == 3 else "TYX", "n_tracks": n_tracks(tracks),
                    "n_tracklets": n_tracklets(tracks), "n_divisions": int(tracks.n_divisions),
                    "statistics": list(stats)}
            arrays_out = {"tracked_labels": tracks.tracked_labels, "ctc": np.asarray(tracks.ctc, np.int64)}
            arrays_out.update({f"stat_{k}": np.asarray(v, np.float64) for k, v in stats.items()})
            return encode(head, arrays_out)

        return _job_reply(srv.jobs.submit("track", run, client=ctx.client, nbytes=cost.nbytes))

    _JOB_ID = re.compile(r"^[0-9a-f]{24}$")

    def _job(request: Request) -> dict[str, Any]:
        job_id = request.path_params["job_id"]
        job = srv.jobs.get(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise HTTPError(404, "no such job (unknown id, or this server's state folder was replaced)")
        return job

    async def job_status(request: Request, ctx: Ctx) -> Response:
        if request.method == "DELETE":
            _job(request)
            job = srv.jobs.cancel(request.path_params["job_id"])
            return JSONResponse(job, 202 if job["status"] not in srv.jobs.FINISHED else 200)
        return JSONResponse(_job(request))

    async def job_result(request: Request, ctx: Ctx) -> Any:
        from starlette.responses import FileResponse

        job = _job(request)
        jid = job["id"]
        if job["status"] == "done":
            path = srv.store.result_path(jid)
            if job.get("result_expired") or not path.is_file():
                raise HTTPError(410, f"the result of job {jid} has expired (kept {config.job_ttl_h:g} h, "
                                     f"{config.job_results_mb:g} MiB in all)")
            return FileResponse(path, media_type=MEDIA_TYPE)
        if job["status"] == "cancelled":
            raise HTTPError(410, f"job {jid} was cancelled")
        if job["status"] == "failed":
            raise HTTPError(500 if job["error"] != "interrupted by restart" else 503,
                            f"job {jid} failed: {job['error']}")
        p = job["progress"]
        raise HTTPError(409, f"job {jid} is {job['status']} ({p['phase']} {p['i']}/{p['n']})")

    # ---- ImageJ commands for remote Fiji
    async def imagej_commands(request: Request, ctx: Ctx) -> Response:
        from ._imagej import catalog_text, command_catalog

        if "text/plain" in request.headers.get("accept", ""):  # the Java shim: java.util.Properties text
            return Response(catalog_text(), media_type="text/plain; charset=ISO-8859-1")
        return JSONResponse(command_catalog())

    async def imagej_command(request: Request, ctx: Ctx) -> Any:
        from ..commands.command import all_commands
        from ijtorch.commands.options import params_from_options
        from ._imagej import ZIP_TYPE, command_inputs, files_command, outputs_to_files, outputs_to_wire, read_files, \
            remote_commands

        header, arrays, _ = await read(request, ctx)
        files = None
        if header.get("format") == "zip":  # the Java shim: ImageJ files (TIFF, RoiSet.zip) in a ZIP
            props, files = read_files(header, arrays)
            command, options = props.get("command", ""), props.get("options", "")
        else:
            req = parse_request(ImageJRequest, header)
            command, options = req.command, req.options
        commands = remote_commands()
        if command not in commands:
            why = ": it needs in-process Python (a Fiji started from Python with ijtorch)" \
                if command in all_commands() else ""
            raise HTTPError(404, f"command {command[:60]!r} cannot run on this server{why}; "
                                 f"available: {sorted(commands)}")
        spec = commands[command]
        params = params_from_options(spec.params, options, command=command)
        if spec.check_remote is not None:
            spec.check_remote(params)
        model = spec.model(params)
        if model is not None:
            srv.model_path(model)  # registered names only, never paths
        inputs = files_command(props, files, spec) if files is not None else command_inputs(req, arrays, spec)
        image = inputs.image.data if inputs.image is not None else None
        shape = image.shape if image is not None else (1,)
        scale = float(getattr(params, "scale", 1.0) or 1.0)
        axes = inputs.image.axes if image is not None else ""
        ticket = srv.admit(ctx, estimate("imagej", shape, axes, image.dtype.itemsize if image is not None else 1,
                                         scale=scale), shape, scale)
        try:
            if files is not None:
                body = await srv.run(ctx, lambda: outputs_to_files(spec.compute(inputs, params), props))
                return held(ticket, Response(body, media_type=ZIP_TYPE))
            reply = await srv.run(ctx, lambda: outputs_to_wire(spec.compute(inputs, params)))
            return held(ticket, _binary(*reply))
        except BaseException:
            ticket.release()
            raise

    async def imagej_function(request: Request, ctx: Ctx) -> Any:
        from ._imagej import ZIP_TYPE, call_function, files_function, read_files

        header, arrays, _ = await read(request, ctx)
        if header.get("format") == "zip":  # the Java shim: request.properties in a ZIP
            props, _files = read_files(header, arrays)
            run: Callable[[], Any] = lambda: Response(files_function(props, srv.model_path), media_type=ZIP_TYPE)
        else:
            req = parse_request(ImageJFunctionRequest, header)
            if arrays:
                raise HTTPError(422, f"a macro function call carries no arrays, got {len(arrays)}")
            run = lambda: _binary(call_function(req.name, req.args, req.values, srv.model_path))  # noqa: E731
        ticket = srv.admission.acquire(ctx.client, 0)
        try:  # not on the inference thread: these are quick and must not wait behind long commands
            try:
                reply = await asyncio.get_running_loop().run_in_executor(None, run)
            except LookupError as exc:
                raise HTTPError(404, str(exc.args[0]) if exc.args else str(exc)) from None
            return held(ticket, reply)
        except BaseException:
            ticket.release()
            raise

    routes = [
        Route("/health", route(health), methods=["GET"]),
        Route("/health/live", route(health), methods=["GET"]),
        Route("/health/ready", route(ready), methods=["GET"]),
        Route("/metrics", route(metrics), methods=["GET"]),
        Route("/metrics/prometheus", route(metrics), methods=["GET"]),
        Route("/models", route(models), methods=["GET"]),
        Route("/segment", route(segment_route), methods=["POST"]),
        Route("/normalize", route(normalize_route), methods=["POST"]),
        Route("/classify", route(classify_route), methods=["POST"]),
        Route("/restore", route(restore_route), methods=["POST"]),
        Route("/jobs/segment", route(segment_job), methods=["POST"]),
        Route("/jobs/track", route(track_job), methods=["POST"]),
        Route("/jobs/{job_id}", route(job_status), methods=["GET", "DELETE"]),
        Route("/jobs/{job_id}/result", route(job_result), methods=["GET"]),
        Route("/imagej/commands", route(imagej_commands), methods=["GET"]),
        Route("/imagej/command", route(imagej_command), methods=["POST"]),
        Route("/imagej/function", route(imagej_function), methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if config.threads:
            import torch

            torch.set_num_threads(int(config.threads))
        srv.batcher.start()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, srv.check_device)
        trimmer = asyncio.create_task(_trim_memory_when_idle(srv.admission))
        if srv.store.interrupted:
            log.warning("%d job(s) of the previous run were interrupted by the restart", srv.store.interrupted)
        yield
        srv.draining = True
        trimmer.cancel()
        await srv.batcher.stop()
        srv.jobs.stop()
        srv.infer.shutdown(wait=False, cancel_futures=True)
        srv.post.shutdown(wait=False, cancel_futures=True)
        srv.jobs_executor.shutdown(wait=False, cancel_futures=True)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return JSONResponse({"error": "no such route" if status == 404 else "method not allowed on this route",
                             "status": status}, status)

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.server = srv
    return _Guard(app, srv)  # type: ignore[return-value]


_access = logging.getLogger("ijtorch.serve.access")


class _Guard:
    """ASGI wrapper: Host/Origin check, token check (all routes but the health ones), request ids,
    body deadline and upload accounting (receive), reply deadline (send), access log, metrics."""

    PUBLIC = ("/health", "/health/live", "/health/ready")

    def __init__(self, app: Starlette, srv: Server) -> None:
        self.app, self.srv = app, srv
        self.state = app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        srv, config = self.srv, self.srv.config
        t0 = time.perf_counter()
        path = scope.get("path", "")
        headers = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k, v.decode("latin-1"))
        rid = headers.get(b"x-request-id", "")
        rid = rid if _RID_RE.match(rid) else secrets.token_hex(8)
        client = (scope.get("client") or ("", 0))[0] or ""
        timeout = config.request_timeout
        asked = headers.get(b"x-request-timeout")
        state = {"code": 500, "bytes": 0, "started": False}
        ctx = Ctx(rid, client, timeout)
        scope["ijtorch.ctx"] = ctx
        abort = scope.get("ijtorch.abort")

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["code"], state["started"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            if ctx.reason == "disconnect":
                return
            try:
                await asyncio.wait_for(send(message), config.send_timeout)
            except asyncio.TimeoutError:
                ctx.stop("disconnect")
                if abort is not None:
                    abort()  # drop what is buffered for a client that does not read
                raise ClientGone(f"the client did not read its reply within {config.send_timeout:g} s") from None

        async def receive_wrapper() -> dict:
            if ctx.body_done:
                return await receive()
            left = t_body + config.body_timeout - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {config.body_timeout:g} s "
                                  "(--body-timeout)") from None
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                if not srv.ledger.try_reserve(n):
                    raise QueueFull("the server's memory budget is in use by uploads and requests; retry later", 2)
                ctx.uploaded += n
                if not message.get("more_body", False):
                    ctx.body_done = True
            return message

        t_body = time.monotonic()
        try:
            why = srv.hosts.check(headers.get(b"host"), headers.get(b"origin"))
            if why is not None:
                await _error_response(HTTPError(403, why), rid)(scope, receive, send_wrapper)
                return
            token = config.token
            if token and path not in self.PUBLIC and not token_matches(token, headers.get(b"authorization")):
                await _error_response(HTTPError(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                                                {"WWW-Authenticate": "Bearer"}), rid)(scope, receive, send_wrapper)
                return
            if asked is not None:
                try:
                    value = float(asked)
                    if not 0 < value < float("inf"):
                        raise ValueError
                    ctx.timeout = min(value, timeout)
                except ValueError:
                    await _error_response(HTTPError(400, "X-Request-Timeout must be a positive number of seconds"),
                                          rid)(scope, receive, send_wrapper)
                    return
            await self.app(scope, receive_wrapper, send_wrapper)
        except ClientGone:
            pass
        finally:
            srv.ledger.release(ctx.uploaded)
            code = state["code"]
            if ctx.reason == "disconnect" and (not state["started"] or code == 499):
                code = 499
                srv.metrics.cancelled.labels("disconnect").inc()
            elif ctx.reason == "deadline":
                srv.metrics.cancelled.labels("deadline").inc()
            key = _route_key(path)
            elapsed = time.perf_counter() - t0
            srv.metrics.record(key, code, elapsed)
            if _access.isEnabledFor(logging.INFO):
                _access.info('%s %s "%s %s" %d %d %.1fms', rid, client or "-", scope.get("method", ""),
                             path[:200].encode("unicode_escape").decode("ascii"), code, state["bytes"],
                             elapsed * 1000)


_KNOWN_PATHS = {"/health", "/health/live", "/health/ready", "/metrics", "/metrics/prometheus", "/models", "/segment",
                "/normalize", "/classify", "/restore", "/jobs/segment", "/jobs/track", "/jobs/{id}",
                "/jobs/{id}/result", "/imagej/commands", "/imagej/command", "/imagej/function"}


def _route_key(path: str) -> str:
    if path.startswith("/jobs/") and not path.startswith(("/jobs/segment", "/jobs/track")):
        path = "/jobs/{id}/result" if path.endswith("/result") else "/jobs/{id}"
    return path if path in _KNOWN_PATHS else "other"


async def _trim_memory_when_idle(admission: Admission, interval_s: float = 2.0) -> None:
    """Once the server has served something and then nothing is queued or running, give the freed
    request buffers back to the OS, so its memory returns to baseline after a burst."""
    seen = admission.admitted
    while True:
        await asyncio.sleep(interval_s)
        if admission.active == 0 and admission.admitted != seen:
            seen = admission.admitted
            await asyncio.get_running_loop().run_in_executor(None, release_free_memory)
