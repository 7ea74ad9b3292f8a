"""What a request to the server may hold: the request models, their validation into arrays and a
calibration, and the error every check raises (:class:`HTTPError`, a status and a client message).

The body of each task route is generated from its command's parameter model (:func:`request_model`,
:data:`ROUTE_COMMANDS`): a parameter added to a command appears here with the same name, default and
bounds, and the route translates it as the command does (``segment_options``, ``track_options``, ...).

Kept apart from :mod:`ijtorch.serve.app` (routes, admission, jobs) so that the job runner and the
ImageJ remote commands validate requests the same way without importing the app.
"""

from __future__ import annotations

import copy
import re
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..commands.command import get_command, surface_fields
from ..image import Calibration, check_axes

__all__ = ["HTTPError", "TaskRequest", "request_model", "ROUTE_COMMANDS", "ROUTE_REQUESTS", "SegmentRequest", "NormalizeRequest", "TrackRequest", "ClassifyRequest", "RestoreRequest",
           "ImageJRequest", "ImageJFunctionRequest", "parse_request", "request_image", "require_finite",
           "request_calibration", "client_message", "MAX_MESSAGE"]


class HTTPError(Exception):
    """An error reply with a status code and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ------------------------------------------------------------------------------ request models
class TaskRequest(BaseModel):
    """A task route's request body: the command's parameters the ``server`` surface shows (same
    names, defaults, bounds and descriptions), plus the image's ``axes`` and ``calibration``."""

    model_config = ConfigDict(extra="forbid")
    command: ClassVar[str] = ""
    params: ClassVar[type[BaseModel]]

    def to_params(self) -> Any:
        """The command's parameter model (fields the server does not show keep their defaults)."""
        return self.params.model_validate({name: getattr(self, name) for name in surface_fields(self.params, "server")})


#: The command behind each task route; its request body is generated from the command's model.
ROUTE_COMMANDS = {"/segment": "ijtorch Segment", "/jobs/segment": "ijtorch Segment",
                  "/normalize": "ijtorch Percentile Normalize", "/restore": "ijtorch Restore",
                  "/classify": "ijtorch Classify", "/jobs/track": "ijtorch Track"}
#: Routes whose body carries items (``images``), not one image with axes and calibration.
ITEM_ROUTES = ("/classify",)

IMAGE_FIELDS: dict[str, Any] = {
    "axes": (str, Field(..., max_length=6, description="axes of the image array, letters from TZCYX")),
    "calibration": (dict[str, Any] | None, Field(None, description="ijtorch.image.Calibration fields")),
}


def request_model(command: str, *, image: bool = True) -> type[TaskRequest]:
    """The request body of a task route running ``command``: generated from its parameter model."""
    cmd = get_command(command)
    fields: dict[str, Any] = dict(IMAGE_FIELDS) if image else {}
    for name in surface_fields(cmd.params, "server"):
        info = cmd.params.model_fields[name]
        fields[name] = (info.annotation, copy.copy(info))
    name = cmd.params.__name__.removesuffix("Params") + "Request"
    model = create_model(name, __base__=TaskRequest, __module__=__name__, **fields)
    model.command, model.params = cmd.name, cmd.params
    return model


SegmentRequest = request_model("ijtorch Segment")
NormalizeRequest = request_model("ijtorch Percentile Normalize")
TrackRequest = request_model("ijtorch Track")
RestoreRequest = request_model("ijtorch Restore")
ClassifyRequest = request_model("ijtorch Classify", image=False)

#: The request model of each task route.
ROUTE_REQUESTS: dict[str, type[TaskRequest]] = {
    "/segment": SegmentRequest, "/jobs/segment": SegmentRequest, "/normalize": NormalizeRequest,
    "/restore": RestoreRequest, "/classify": ClassifyRequest, "/jobs/track": TrackRequest}


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
        req = model.model_validate(header)
        if isinstance(req, TaskRequest):
            req.to_params()  # the command model's own checks (validators across fields) answer 422 too
        return req
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
