"""The ijtorch model server: an ASGI app (Starlette) serving the task functions to many clients.

Routes (binary bodies use the format of :mod:`ijtorch.serve._wire`; JSON elsewhere):

=====================  ======  =============================================================
``/health``            GET     liveness (no token needed)
``/metrics``           GET     queue length, latency percentiles, batch sizes, RSS, GPU memory
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

Status codes: 400 malformed message, 401 missing/wrong token, 404 unknown model or job,
409 job not finished, 410 job cancelled, 413 body over ``--max-request-mb``, 415 wrong media
type, 422 invalid parameters, shape, dtype or axes, 500 the model failed (that request only),
503 + ``Retry-After`` when ``--max-queue`` requests are queued or running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import IjtorchError, ModelError
from ..image import Calibration, check_axes
from ._security import ModelNames, token_matches
from ._state import Admission, JobManager, Metrics, QueueFull, gpu_memory, release_free_memory, rss_bytes
from ._wire import MEDIA_TYPE, WireError, decode, encode
from .batching import DynamicBatcher

__all__ = ["ServerConfig", "create_app", "HTTPError"]

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


class HTTPError(Exception):
    """An error reply with a status code and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------------------------ request models
class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    axes: str = Field(..., description="axes of the image array, letters from TZCYX")
    calibration: dict[str, Any] | None = Field(None, description="ijtorch.image.Calibration fields")


class SegmentRequest(_Req):
    model: str = Field("nuclei", description="registered model name")
    channel: int | None = Field(None, ge=0, description="channel index (0-based) when axes has C")
    prob_threshold: float | None = Field(None, ge=0, le=1, description="None = tuned value")
    nms_threshold: float | None = Field(None, ge=0, le=1, description="None = tuned value")
    tile_size: int | None = Field(None, ge=32, le=4096, description="tile edge in pixels; None = the model's default (512 in 2D)")
    overlap: int | None = Field(None, ge=0, description="tile overlap in pixels; None = the model's default (96 in 2D)")
    test_time_augmentation: bool = Field(False, description="average over 8 flips/rotations (2D models; 8x slower)")
    scale: float = Field(1.0, ge=0.1, le=10, description="resize by this factor before the model (2D models)")


class NormalizeRequest(_Req):
    low: float = Field(1.0, ge=0, le=100, description="percentile mapped to 0")
    high: float = Field(99.8, ge=0, le=100, description="percentile mapped to 1")
    per_plane: bool = Field(False, description="normalise every Z/T plane separately")
    clip: bool = Field(False, description="clip to [0, 1]")


class TrackRequest(_Req):
    model: str = Field("nuclei", description="segmentation model (unless is_labels)")
    channel: int | None = Field(None, ge=0, description="channel index (0-based) when axes has C")
    is_labels: bool = Field(False, description="the image already holds label masks")
    max_distance: float = Field(15.0, gt=0, description="largest frame-to-frame displacement")
    max_gap: int = Field(2, ge=0, description="largest number of missed frames bridged")
    divisions: bool = Field(False, description="detect divisions")
    fill_gaps: bool = Field(False, description="insert an interpolated object in each frame a closed gap skips")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="registered classifier model name")


class RestoreRequest(_Req):
    model: str = Field(..., description="registered restoration model name")
    channel: int | None = Field(None, ge=0, description="channel index (0-based) when axes has C")


class ImageJRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = Field(..., description="ImageJ command name, e.g. 'ijtorch Segment'")
    options: str = Field("", description="macro options string")
    title: str = Field("", description="title of the current image")
    axes: str = Field("TZCYX", description="axes of the image array")
    calibration: dict[str, Any] | None = None
    image_path: str = Field("", description="file the image was opened from on the client, or ''")
    rois: dict[str, Any] | None = Field(None, description="the ROI Manager's ROIs (commands that read them)")
    images: dict[str, dict[str, Any]] | None = Field(None, description="open images named by options")


class ImageJFunctionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="macro function name, e.g. 'ijtorchListModels'")
    args: list[str | float] = Field(default_factory=list, description="the macro arguments")
    values: dict[str, Any] = Field(default_factory=dict, description="the client ImageJ's session values")


def _parse(model: type[BaseModel], header: dict[str, Any]) -> Any:
    try:
        return model.model_validate(header)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'header'}: {e['msg']}"
                             + (f" (got {e['input']!r})" if e["type"] != "missing" else "") for e in exc.errors())
        raise HTTPError(422, f"invalid request header: {problems}") from None


def _image(arrays: dict[str, np.ndarray], axes: str, *, name: str = "image") -> tuple[np.ndarray, str]:
    if set(arrays) != {name}:
        raise HTTPError(422, f"expected exactly one array named {name!r}, got {sorted(arrays)}")
    data = arrays[name]
    try:
        axes = check_axes(axes, data.ndim)
    except (TypeError, ValueError) as exc:
        raise HTTPError(422, f"{exc} (array shape {list(data.shape)})") from None
    if 0 in data.shape:
        raise HTTPError(422, f"array {name!r} has an empty axis: shape {list(data.shape)}")
    if data.dtype.kind not in "iuf":
        raise HTTPError(422, f"array {name!r} has dtype {data.dtype}; expected an integer or float image")
    return data, axes


def _calibration(values: dict[str, Any] | None) -> Calibration:
    try:
        return Calibration.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise HTTPError(422, f"calibration: {exc}") from None


def _binary(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, status: int = 200) -> Response:
    return Response(encode(header, arrays), status_code=status, media_type=MEDIA_TYPE)


# ------------------------------------------------------------------------------------- server
class Server:
    """State shared by the routes: model names, executors, batcher, admission, jobs, metrics."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.models = ModelNames()
        self.admission = Admission(config.max_queue)
        self.infer = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-infer")
        # per-image post-processing (NMS, labels) of batched requests: overlaps the next forward pass
        self.post = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-post")
        self.jobs_executor = ThreadPoolExecutor(1, thread_name_prefix="ijtorch-jobs")
        # one batcher for every batched route: its key's first entry names the route's batch function
        self.batcher = DynamicBatcher(self._run_batch, self.infer, finish_executor=self.post,
                                      max_batch=config.max_batch, wait_s=config.batch_wait_ms / 1000)
        self.jobs = JobManager(self.jobs_executor, self.admission)
        self.metrics = Metrics()
        self.max_bytes = int(config.max_request_mb * (1 << 20))
        self._loaded: dict[tuple[str, int], Any] = {}

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

        route, path = key[0], key[1]
        if route == "segment":
            return forward_maps(self.load(path), payloads)  # an exception reaches every request of the batch
        if route == "classify":
            return classify_batch(path, payloads, self.config.device)
        raise RuntimeError(f"internal error: no batch function for {route!r}")

    # ---- segmentation
    async def segment(self, data: np.ndarray, axes: str, req: SegmentRequest) -> Any:
        from ..tasks.segment import _pick_channel, segment
        from ._batched import batchable, instances

        path = self.model_path(req.model)
        if "S" in axes:
            raise HTTPError(422, f"axes={axes!r}: RGB (S) images are not supported; send one channel")
        if req.overlap is not None and req.overlap >= (req.tile_size or 512):
            raise HTTPError(422, f"overlap={req.overlap} must be smaller than tile_size={req.tile_size or 512}")
        try:
            plane, plane_axes = _pick_channel(data, axes, req.channel)
        except ValueError as exc:
            raise HTTPError(422, str(exc)) from None
        loop = asyncio.get_running_loop()
        model = await self.load_async(path)
        if plane_axes == "YX" and not req.test_time_augmentation and req.scale == 1 and batchable(model, plane.shape, req.tile_size or 512):
            key = ("segment", path, plane.shape, str(plane.dtype))
            return await self.batcher.submit(key, plane, finish=lambda maps: instances(
                model, maps, req.prob_threshold, req.nms_threshold, path))
        return await loop.run_in_executor(self.infer, lambda: segment(
            data, axes, model=path, channel=req.channel, prob_threshold=req.prob_threshold,
            nms_threshold=req.nms_threshold, tile_size=req.tile_size, overlap=req.overlap,
            test_time_augmentation=req.test_time_augmentation, scale=req.scale, device=self.config.device))

    # ---- classification
    async def classify(self, images: np.ndarray, model: str) -> dict[str, Any]:
        """``classify(images, model=...)``; small requests for one model and item shape share one call."""
        from ..tasks.classify import classify
        from ._batched import CLASSIFY_BATCHABLE_ITEMS

        path = self.model_path(model)
        if 1 <= len(images) <= CLASSIFY_BATCHABLE_ITEMS:
            return await self.batcher.submit(("classify", path, images.shape[1:], images.dtype.str), images)
        return await asyncio.get_running_loop().run_in_executor(self.infer, lambda: classify(
            images, model=path, device=self.config.device))


def _segment_reply(result: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return ({"axes": result.axes, "n_objects": result.n_objects, "model": result.model,
             "prob_threshold": result.prob_threshold, "nms_threshold": result.nms_threshold,
             "seconds": result.seconds, "device": result.device,
             "objects_per_plane": list(result.objects_per_plane)}, {"labels": result.labels})


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise HTTPError(413, f"request body of {int(length)} bytes exceeds the limit of {limit} bytes "
                                     "(--max-request-mb)")
        except ValueError:
            raise HTTPError(400, f"Content-Length {length!r} is not a number") from None
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != MEDIA_TYPE:
        raise HTTPError(415, f"Content-Type must be {MEDIA_TYPE} (4-byte header length, JSON header, raw "
                             f"little-endian arrays), got {ctype or 'none'!r}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes (--max-request-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_reply(exc: BaseException) -> HTTPError:
    """The reply for an exception raised by a task or model."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, QueueFull):
        return HTTPError(503, str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, WireError):
        return HTTPError(400, f"malformed message: {exc}")
    if isinstance(exc, ModelError):
        return HTTPError(500, f"the model failed: {exc}")
    if isinstance(exc, (ValueError, TypeError, IjtorchError)):
        return HTTPError(422, str(exc))
    if isinstance(exc, InterruptedError):
        return HTTPError(409, f"cancelled: {exc}")
    log.warning("request failed: %s: %s", type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
    return HTTPError(500, f"the model failed: {type(exc).__name__}: {exc}")


def create_app(config: ServerConfig | None = None) -> Starlette:
    """The ASGI application for ``config`` (run it with uvicorn; see :mod:`ijtorch.serve`)."""
    config = config or ServerConfig()
    srv = Server(config)

    def route(fn: Callable, *, admit: bool = False) -> Callable:
        async def endpoint(request: Request) -> Response:
            admitted = False
            try:
                if admit:
                    srv.admission.acquire()
                    admitted = True
                return await fn(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error reply
                err = _error_reply(exc)
                return JSONResponse({"error": err.message, "status": err.status}, err.status, headers=err.headers)
            finally:
                if admitted:
                    srv.admission.release()

        return endpoint

    async def read(request: Request) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return decode(await _read_body(request, srv.max_bytes))

    # ---- info
    async def health(request: Request) -> Response:
        from .. import __version__

        return JSONResponse({"status": "ok", "version": __version__})

    async def metrics(request: Request) -> Response:
        out = srv.metrics.as_dict()
        out.update(queue={"active": srv.admission.active, "limit": srv.admission.limit,
                          "batcher_waiting": len(srv.batcher), "rejected": srv.admission.rejected},
                   batching={"max_batch": srv.batcher.max_batch, **srv.batcher.stats.as_dict()},
                   jobs=srv.jobs.counts(), rss_bytes=rss_bytes(), gpu=gpu_memory())
        return JSONResponse(out)

    async def models(request: Request) -> Response:
        return JSONResponse({"models": srv.models.names()})

    # ---- tasks
    async def segment_route(request: Request) -> Response:
        header, arrays = await read(request)
        req = _parse(SegmentRequest, header)
        data, axes = _image(arrays, req.axes)
        return _binary(*_segment_reply(await srv.segment(data, axes, req)))

    async def normalize_route(request: Request) -> Response:
        from ..tasks.normalize import normalize

        header, arrays = await read(request)
        req = _parse(NormalizeRequest, header)
        data, axes = _image(arrays, req.axes)
        out = await asyncio.get_running_loop().run_in_executor(srv.infer, lambda: normalize(
            data, axes, low=req.low, high=req.high, per_plane=req.per_plane, clip=req.clip))
        return _binary({"axes": axes}, {"image": out})

    async def classify_route(request: Request) -> Response:
        header, arrays = await read(request)
        req = _parse(ClassifyRequest, header)
        if set(arrays) != {"images"} or arrays["images"].ndim not in (4, 5):
            raise HTTPError(422, "expected one array 'images' of shape (N, C, Y, X) or (N, C, Z, Y, X)")
        out = await srv.classify(np.asarray(arrays["images"]), req.model)
        return _binary({"classes": list(out["classes"]), "class": [str(c) for c in out["class"]]},
                       {"class_index": out["class_index"], "probabilities": out["probabilities"],
                        "confidence": np.asarray(out["confidence"])})

    async def restore_route(request: Request) -> Response:
        from ..tasks.restore import restore

        header, arrays = await read(request)
        req = _parse(RestoreRequest, header)
        data, axes = _image(arrays, req.axes)
        path = srv.model_path(req.model)
        res = await asyncio.get_running_loop().run_in_executor(srv.infer, lambda: restore(
            data, axes, model=path, channel=req.channel, device=config.device))
        return _binary({"axes": res.axes, "model": res.model, "shift_warning": res.shift_warning,
                        "seconds": res.seconds}, {"restored": res.restored})

    # ---- jobs
    def _job_reply(job: Any) -> Response:
        return JSONResponse({**job.as_dict(), "status_url": f"/jobs/{job.id}", "result_url": f"/jobs/{job.id}/result"},
                            202)

    async def segment_job(request: Request) -> Response:
        from ..tasks.segment import segment

        header, arrays = await read(request)
        req = _parse(SegmentRequest, header)
        data, axes = _image(arrays, req.axes)
        path = srv.model_path(req.model)

        def run(progress: Callable, cancelled: Callable[[], bool]) -> bytes:
            result = segment(data, axes, model=path, channel=req.channel, prob_threshold=req.prob_threshold,
                             nms_threshold=req.nms_threshold, tile_size=req.tile_size, overlap=req.overlap,
                             test_time_augmentation=req.test_time_augmentation, scale=req.scale, device=config.device,
                             progress=progress, cancel=cancelled)
            return encode(*_segment_reply(result))

        return _job_reply(srv.jobs.submit("segment", run))

    async def track_job(request: Request) -> Response:
        from ..tasks.segment import segment
        from ..tasks.track import track_statistics
        from ..tasks.tracking import TrackingParams, track_labels

        header, arrays = await read(request)
        req = _parse(TrackRequest, header)
        data, axes = _image(arrays, req.axes)
        if "T" not in axes:
            raise HTTPError(422, f"axes={axes!r}: tracking needs a time axis T")
        if req.is_labels and "C" in axes:
            raise HTTPError(422, f"axes={axes!r}: a label stack has no channel axis")
        path = None if req.is_labels else srv.model_path(req.model)
        calibration = _calibration(req.calibration)
        params = TrackingParams(max_distance=req.max_distance, max_gap=req.max_gap, allow_splitting=req.divisions,
                                fill_gaps=req.fill_gaps)

        def run(progress: Callable, cancelled: Callable[[], bool]) -> bytes:
            labels, label_axes, intensity = data, axes, None
            if not req.is_labels:  # as track_movie, with cancellation between frames
                seg = segment(data, axes, model=path, channel=req.channel, device=config.device,
                              progress=progress, cancel=cancelled)
                labels, label_axes = seg.labels, seg.axes
                intensity = data if "C" not in axes else np.take(data, req.channel or 0, axis=axes.index("C"))
            if cancelled():
                raise InterruptedError("tracking cancelled")
            tracks = track_labels(labels, label_axes, intensity=intensity, calibration=calibration, params=params,
                                  progress=progress)
            stats = track_statistics(tracks)
            head = {"axes": "TZYX" if tracks.ndim == 3 else "TYX", "n_tracks": int(len(tracks.ctc)),
                    "n_divisions": int(tracks.n_divisions), "statistics": list(stats)}
            arrays_out = {"tracked_labels": tracks.tracked_labels, "ctc": np.asarray(tracks.ctc, np.int64)}
            arrays_out.update({f"stat_{k}": np.asarray(v, np.float64) for k, v in stats.items()})
            return encode(head, arrays_out)

        return _job_reply(srv.jobs.submit("track", run))

    def _job(request: Request) -> Any:
        job = srv.jobs.get(request.path_params["job_id"])
        if job is None:
            raise HTTPError(404, f"no job {request.path_params['job_id']!r} (unknown or expired)")
        return job

    async def job_status(request: Request) -> Response:
        if request.method == "DELETE":
            job = srv.jobs.cancel(request.path_params["job_id"])
            if job is None:
                raise HTTPError(404, f"no job {request.path_params['job_id']!r} (unknown or expired)")
            return JSONResponse(job.as_dict(), 202 if job.status not in srv.jobs.FINISHED else 200)
        return JSONResponse(_job(request).as_dict())

    async def job_result(request: Request) -> Response:
        job = _job(request)
        if job.status == "done":
            return Response(job.result, media_type=MEDIA_TYPE)
        if job.status == "cancelled":
            raise HTTPError(410, f"job {job.id} was cancelled")
        if job.status == "failed":
            raise HTTPError(500, f"job {job.id} failed: {job.error}")
        raise HTTPError(409, f"job {job.id} is {job.status} ({job.phase} {job.i}/{job.n})")

    # ---- ImageJ commands for remote Fiji
    async def imagej_commands(request: Request) -> Response:
        from ._imagej import command_catalog

        return JSONResponse(command_catalog())

    async def imagej_command(request: Request) -> Response:
        from ..bridge._commands import registered_commands
        from ..bridge._options import params_from_options
        from ._imagej import command_inputs, outputs_to_wire, remote_commands

        header, arrays = await read(request)
        req = _parse(ImageJRequest, header)
        commands = remote_commands()
        if req.command not in commands:
            why = ": it needs in-process Python (a Fiji started from Python with ijtorch)" \
                if req.command in registered_commands() else ""
            raise HTTPError(404, f"command {req.command!r} cannot run on this server{why}; available: {sorted(commands)}")
        spec = commands[req.command]
        params = params_from_options(spec.params, req.options, command=req.command)
        if spec.check is not None:
            spec.check(params)
        model = spec.model(params)
        if model is not None:
            srv.model_path(model)  # registered names only, never paths
        inputs = command_inputs(req, arrays, spec)
        reply = await asyncio.get_running_loop().run_in_executor(
            srv.infer, lambda: outputs_to_wire(spec.compute(inputs, params)))
        return _binary(*reply)

    async def imagej_function(request: Request) -> Response:
        from ._imagej import call_function

        header, arrays = await read(request)
        req = _parse(ImageJFunctionRequest, header)
        if arrays:
            raise HTTPError(422, f"a macro function call carries no arrays, got {sorted(arrays)}")
        try:  # not on the inference thread: these are quick and must not wait behind long commands
            reply = await asyncio.get_running_loop().run_in_executor(
                None, call_function, req.name, req.args, req.values, srv.model_path)
        except LookupError as exc:
            raise HTTPError(404, str(exc.args[0]) if exc.args else str(exc)) from None
        return _binary(reply)

    routes = [
        Route("/health", route(health), methods=["GET"]),
        Route("/metrics", route(metrics), methods=["GET"]),
        Route("/models", route(models), methods=["GET"]),
        Route("/segment", route(segment_route, admit=True), methods=["POST"]),
        Route("/normalize", route(normalize_route, admit=True), methods=["POST"]),
        Route("/classify", route(classify_route, admit=True), methods=["POST"]),
        Route("/restore", route(restore_route, admit=True), methods=["POST"]),
        Route("/jobs/segment", route(segment_job), methods=["POST"]),
        Route("/jobs/track", route(track_job), methods=["POST"]),
        Route("/jobs/{job_id}", route(job_status), methods=["GET", "DELETE"]),
        Route("/jobs/{job_id}/result", route(job_result), methods=["GET"]),
        Route("/imagej/commands", route(imagej_commands), methods=["GET"]),
        Route("/imagej/command", route(imagej_command, admit=True), methods=["POST"]),
        Route("/imagej/function", route(imagej_function, admit=True), methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette):
        if config.threads:
            import torch

            torch.set_num_threads(int(config.threads))
        srv.batcher.start()
        trimmer = asyncio.create_task(_trim_memory_when_idle(srv.admission))
        yield
        trimmer.cancel()
        await srv.batcher.stop()
        srv.infer.shutdown(wait=False, cancel_futures=True)
        srv.post.shutdown(wait=False, cancel_futures=True)
        srv.jobs_executor.shutdown(wait=False, cancel_futures=True)

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.server = srv
    return _Guard(app, srv)  # type: ignore[return-value]


class _Guard:
    """ASGI wrapper: token check (all routes but ``/health``) and per-route metrics."""

    def __init__(self, app: Starlette, srv: Server) -> None:
        self.app, self.srv = app, srv
        self.state = app.state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path = scope.get("path", "")
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        token = self.srv.config.token
        if token and path != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not token_matches(token, auth):
                resp = JSONResponse({"error": "missing or wrong token: send 'Authorization: Bearer <token>'",
                                     "status": 401}, 401, headers={"WWW-Authenticate": "Bearer"})
                await resp(scope, receive, send_wrapper)
                self.srv.metrics.record("unauthorized", 401, time.perf_counter() - t0)
                return
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            key = "/jobs/{id}" if path.startswith("/jobs/") and path.count("/") >= 2 and not path.startswith(
                ("/jobs/segment", "/jobs/track")) else path
            if key not in _KNOWN_PATHS:
                key = "other"
            self.srv.metrics.record(key, status["code"], time.perf_counter() - t0)


_KNOWN_PATHS = {"/health", "/metrics", "/models", "/segment", "/normalize", "/classify", "/restore", "/jobs/segment",
                "/jobs/track", "/jobs/{id}", "/imagej/commands", "/imagej/command",
                "/imagej/function"}


async def _trim_memory_when_idle(admission: Admission, interval_s: float = 2.0) -> None:
    """Once the server has served something and then nothing is queued or running, give the freed
    request buffers back to the OS, so its memory returns to baseline after a burst."""
    seen = admission.admitted
    while True:
        await asyncio.sleep(interval_s)
        if admission.active == 0 and admission.admitted != seen:
            seen = admission.admitted
            await asyncio.get_running_loop().run_in_executor(None, release_free_memory)
