"""Python client of the ijtorch model server.

Examples
--------
>>> from ijtorch.serve import Client                       # doctest: +SKIP
>>> with Client("http://127.0.0.1:8765") as c:             # doctest: +SKIP
...     result = c.segment(image, "YX", model="nuclei")    # a SegmentationResult
...     job = c.submit_track(movie, "TYX", model="nuclei")
...     tracks = c.wait(job)                               # header and arrays of the reply
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np

from ..image import Calibration
from ._wire import MEDIA_TYPE, decode, encode

__all__ = ["Client", "ServerError"]


class ServerError(RuntimeError):
    """A reply with an error status; ``status``, ``message`` and ``retry_after`` (503) are kept."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class Client:
    """Talks to ``ijtorch serve``.

    Parameters
    ----------
    url
        Server address, e.g. ``http://127.0.0.1:8765``.
    token
        Sent as ``Authorization: Bearer <token>`` when given.
    timeout
        Seconds to wait for one reply; the server is asked to give up at the same time
        (``X-Request-Timeout``), so work the client no longer waits for is stopped.

    The options of each task are the parameters of its ImageJ command, with the same names and
    defaults (the server's request bodies are generated from the command models): channels
    (``channel=``) are numbered from 1, as in ImageJ; ``0`` for a threshold, tile size or overlap means
    the model's tuned value or default. An option given as ``None`` is left out (the default applies).
    """

    def __init__(self, url: str = "http://127.0.0.1:8765", *, token: str | None = None, timeout: float = 120.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if timeout:
            headers["X-Request-Timeout"] = f"{float(timeout):g}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- transport
    def _check(self, response: Any) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            retry = response.headers.get("retry-after")
            raise ServerError(response.status_code, message, float(retry) if retry else None)
        return response

    def _get(self, path: str) -> Any:
        return self._check(self._http.get(path)).json()

    def post_raw(self, path: str, body: bytes) -> Any:
        """POST an already encoded message; returns the ``httpx.Response`` (errors raise)."""
        return self._check(self._http.post(path, content=body, headers={"Content-Type": MEDIA_TYPE}))

    def post(self, path: str, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Any:
        """POST a message; returns the decoded ``(header, arrays)`` or, for 202, the JSON reply."""
        response = self.post_raw(path, encode(header, arrays))
        if response.headers.get("content-type", "").startswith(MEDIA_TYPE):
            return decode(response.content)
        return response.json()

    # ---------------------------------------------------------------- info
    def health(self) -> dict[str, Any]:
        return self._get("/health")

    def metrics(self) -> dict[str, Any]:
        return self._get("/metrics")

    def models(self) -> list[str]:
        return self._get("/models")["models"]

    # ---------------------------------------------------------------- tasks
    @staticmethod
    def _image_header(axes: str, calibration: Calibration | dict | None, **options: Any) -> dict[str, Any]:
        cal = calibration.to_dict() if isinstance(calibration, Calibration) else calibration
        return {"axes": axes, "calibration": cal, **{k: v for k, v in options.items() if v is not None}}

    def segment(self, data: np.ndarray, axes: str, *, model: str = "auto", channel: int = 1,
                prob_threshold: float = 0.0, nms_threshold: float = 0.0, tile_size: int = 0, overlap: int = 0,
                test_time_augmentation: bool = False, scale: float = 1.0, min_confidence: float = 0.0,
                rgb: str = "luminance", calibration: Calibration | dict | None = None) -> Any:
        """The ``ijtorch Segment`` command's computation on the server; returns a ``SegmentationResult``.

        ``channel`` counts from 1, as in ImageJ, the Fiji menu and the CLI (``channel=k`` here is
        ``segment(..., channel=k-1)`` in process); 0 for a threshold = the model's tuned value, for
        ``tile_size``/``overlap`` = the model's default."""

        header, arrays = self.post("/segment", self._image_header(
            axes, calibration, model=model, channel=channel, prob_threshold=prob_threshold,
            nms_threshold=nms_threshold, tile_size=tile_size, overlap=overlap,
            test_time_augmentation=test_time_augmentation, scale=scale, min_confidence=min_confidence, rgb=rgb),
            {"image": data})
        return _segmentation_result(header, arrays)

    def normalize(self, data: np.ndarray, axes: str, *, low: float = 1.0, high: float = 99.8,
                  per_plane: bool = False, clip: bool = False) -> np.ndarray:
        """The ``ijtorch Percentile Normalize`` command's computation (:func:`ijtorch.core.normalize.normalize`)
        on the server."""
        _, arrays = self.post("/normalize", self._image_header(axes, None, low=low, high=high, per_plane=per_plane,
                                                               clip=clip), {"image": data})
        return arrays["image"]

    def restore(self, data: np.ndarray, axes: str, *, model: str, channel: int = 1, uncertainty: bool = False,
                error_map: bool = False, tile_size: int = 512) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The ``ijtorch Restore`` command's computation on the server: the reply header (``axes``,
        ``model``, ``shift_warning``) and arrays ``restored`` (and ``uncertainty`` / ``error_map``)."""
        return self.post("/restore", self._image_header(axes, None, model=model, channel=channel,
                                                        uncertainty=uncertainty, error_map=error_map,
                                                        tile_size=tile_size), {"image": data})

    # ---------------------------------------------------------------- jobs
    def submit_segment(self, data: np.ndarray, axes: str, *, model: str = "nuclei", **options: Any) -> str:
        """Start segmentation as a job (progress, cancellation); returns the job id."""
        return self.post("/jobs/segment", self._image_header(axes, options.pop("calibration", None), model=model,
                                                             **options), {"image": data})["id"]

    def submit_track(self, data: np.ndarray, axes: str, *, model: str = "nuclei", **options: Any) -> str:
        """Start tracking as a job; options as the ``ijtorch Track`` command (``labels``, ``channel``,
        ``max_distance``, ``max_gap``, ``divisions`` (on by default), ``fill_gaps``). The reply counts
        ``n_tracks`` as TrackMate does (a dividing cell and its daughters are one track) and
        ``n_tracklets`` (CTC's division-free segments)."""
        return self.post("/jobs/track", self._image_header(axes, options.pop("calibration", None), model=model,
                                                           **options), {"image": data})["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        """Status and progress of a job."""
        return self._get(f"/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop (it stops at its next cancellation point)."""
        return self._check(self._http.delete(f"/jobs/{job_id}")).json()

    def result(self, job_id: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The reply of a finished job (raises ServerError 409 while it runs, 410 if cancelled)."""
        return decode(self._check(self._http.get(f"/jobs/{job_id}/result")).content)

    def wait(self, job_id: str, *, timeout: float = 600.0, poll: float = 0.1) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Poll until the job finishes; returns its reply (or raises ServerError)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.job(job_id)["status"]
            if status in ("done", "failed", "cancelled"):
                return self.result(job_id)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout} s")
            time.sleep(poll)

    # ---------------------------------------------------------------- ImageJ
    def imagej_command(self, command: str, options: str, data: np.ndarray, axes: str, *, title: str = "",
                       calibration: Calibration | dict | None = None, extra_arrays: Mapping[str, np.ndarray] | None = None,
                       **fields: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the Java shim sends for a remote command; returns the outputs header and arrays.

        ``fields`` adds request fields (``image_path``, ``rois``, ``images``; see
        :mod:`ijtorch.serve._imagej`) whose arrays come in ``extra_arrays``.
        """
        cal = calibration.to_dict() if isinstance(calibration, Calibration) else calibration
        return self.post("/imagej/command", {"command": command, "options": options, "title": title, "axes": axes,
                                             "calibration": cal, **fields}, {"image": data, **(extra_arrays or {})})

    def imagej_function(self, name: str, *args: str | float, values: Mapping[str, Any] | None = None) -> str | float:
        """What the Java shim sends for ``Ext.<name>(args)``: its string result, or its number for
        functions that set a number; ``values`` are the calling ImageJ's session values (``n_objects``, ...)."""
        header, _ = self.post("/imagej/function", {"name": name, "args": list(args), "values": dict(values or {})}, {})
        return header["number"] if "number" in header else header["value"]


def _segmentation_result(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    from ..tasks.segment import SegmentationResult

    return SegmentationResult(labels=np.array(arrays["labels"]), axes=header["axes"], n_objects=header["n_objects"],
                              model=header["model"], prob_threshold=header["prob_threshold"],
                              nms_threshold=header["nms_threshold"], seconds=header["seconds"],
                              device=header["device"], objects_per_plane=tuple(header["objects_per_plane"]),
                              shift_score=header.get("shift_score"), shift_threshold=header.get("shift_threshold"),
                              shift_warning=header.get("shift_warning"), shift_message=header.get("shift_message", ""),
                              model_choice=header.get("model_choice", ""),
                              confidence=None if header.get("confidence") is None
                              else np.asarray(header["confidence"], np.float32))
