"""What a request to the server may hold: the request models, their validation into arrays and a
calibration, and the error every check raises (:class:`HTTPError`, a status and a client message).

Kept apart from :mod:`ijtorch.serve.app` (routes, admission, jobs) so that the job runner and the
ImageJ remote commands validate requests the same way without importing the app.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..image import Calibration, check_axes

__all__ = ["HTTPError", "SegmentRequest", "NormalizeRequest", "TrackRequest", "ClassifyRequest", "RestoreRequest",
           "ImageJRequest", "ImageJFunctionRequest", "parse_request", "request_image", "require_finite",
           "request_calibration", "client_message", "MAX_MESSAGE"]


class HTTPError(Exception):
    """An error reply with a status code and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------------------------ request models
class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")
    axes: str = Field(..., max_length=6, description="axes of the image array, letters from TZCYX")
    calibration: dict[str, Any] | None = Field(None, description="ijtorch.image.Calibration fields")


class SegmentRequest(_Req):
    model: str = Field("nuclei", max_length=128, description="registered model name")
    channel: int | None = Field(None, ge=1, le=4096, description="channel number (1-based, as in ImageJ) when axes has C")
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
    model: str = Field("nuclei", max_length=128, description="segmentation model (unless is_labels)")
    channel: int | None = Field(None, ge=1, le=4096, description="channel number (1-based, as in ImageJ) when axes has C")
    is_labels: bool = Field(False, description="the image already holds label masks")
    max_distance: float = Field(15.0, gt=0, description="largest frame-to-frame displacement")
    max_gap: int = Field(2, ge=0, description="largest number of missed frames bridged")
    divisions: bool = Field(False, description="detect divisions")
    fill_gaps: bool = Field(False, description="insert an interpolated object in each frame a closed gap skips")


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., max_length=128, description="registered classifier model name")


class RestoreRequest(_Req):
    model: str = Field(..., max_length=128, description="registered restoration model name")
    channel: int | None = Field(None, ge=1, le=4096, description="channel number (1-based, as in ImageJ) when axes has C")


class ImageJRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = Field(..., max_length=200, description="ImageJ command name, e.g. 'ijtorch Segment'")
    options: str = Field("", max_length=65536, description="macro options string")
    title: str = Field("", max_length=4096, description="title of the current image")
    axes: str = Field("TZCYX", max_length=6, description="axes of the image array")
    calibration: dict[str, Any] | None = None
    image_path: str = Field("", max_length=4096, description="file the image was opened from on the client, or ''")
    rois: dict[str, Any] | None = Field(None, description="the ROI Manager's ROIs (commands that read them)")
    images: dict[str, dict[str, Any]] | None = Field(None, description="open images named by options")


class ImageJFunctionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., max_length=100, description="macro function name, e.g. 'ijtorchListModels'")
    args: list[str | float] = Field(default_factory=list, max_length=64, description="the macro arguments")
    values: dict[str, Any] = Field(default_factory=dict, description="the client ImageJ's session values")


def parse_request(model: type[BaseModel], header: dict[str, Any]) -> Any:
    try:
        return model.model_validate(header)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))[:64] or 'header'}: {e['msg']}"
                             for e in exc.errors()[:8])  # the input itself is never repeated
        raise HTTPError(422, f"invalid request header: {problems}") from None


def request_image(arrays: dict[str, np.ndarray], axes: str, *, name: str = "image") -> tuple[np.ndarray, str]:
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


def require_finite(arrays: dict[str, np.ndarray]) -> None:
    """422 for any float array holding NaN or infinity (checked one block at a time)."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and a.size:
            flat = a.reshape(-1)
            for k in range(0, flat.size, 1 << 22):
                if not np.isfinite(flat[k:k + (1 << 22)]).all():
                    raise HTTPError(422, f"array {name!r} holds NaN or infinite values; replace them (e.g. "
                                         "Process > Math > Remove NaNs in ImageJ) before sending")


def request_calibration(values: dict[str, Any] | None) -> Calibration:
    try:
        return Calibration.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise HTTPError(422, f"calibration: {exc}") from None


# ------------------------------------------------------------------------------------- messages
_PATH_RE = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[\\/][\w.@+~-]+){2,}[\\/]?")
MAX_MESSAGE = 1000


def client_message(message: str) -> str:
    """An error message fit for a client: absolute server paths shortened to their last part, at
    most :data:`MAX_MESSAGE` characters (values from the request are bounded where they are checked)."""
    message = _PATH_RE.sub(lambda m: "…/" + re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], str(message))
    message = message.encode("utf-8", "replace").decode("utf-8", "replace")
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
