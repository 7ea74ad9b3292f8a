"""The binary message format shared by the server, the Python client and the Java shim.

A message is ``[uint32 little-endian header length][UTF-8 JSON header][raw array bytes]``. The
header is a JSON object; its ``"arrays"`` entry lists the arrays that follow, in order, each as
``{"name": str, "dtype": str, "shape": [int, ...]}`` with a little-endian numpy dtype string
(``"|u1"``, ``"<u2"``, ``"<f4"``, ...). The array bytes are C order and follow each other with no
padding, so the message length is exactly ``4 + header length + sum(nbytes)``. No base64, no temp
files: decoding wraps the request body with ``np.frombuffer`` (zero copy, read-only).

Media type: :data:`MEDIA_TYPE`.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Mapping

import numpy as np

__all__ = ["MEDIA_TYPE", "WireError", "encode", "decode", "DTYPES", "MAX_HEADER_BYTES"]

MEDIA_TYPE = "application/x-ijtorch"
MAX_HEADER_BYTES = 4 << 20  # ROI names and table text travel in the header; 4 MiB is plenty
MAX_NDIM = 6
MAX_ARRAYS = 64
MAX_DEPTH = 32  # JSON nesting of a header: ROI and table fields need a few levels


def _too_deep(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a parsed JSON value nests deeper than ``limit`` (iterative: no recursion to exhaust).
    Deeper texts than the interpreter's recursion limit already fail in ``json.loads``."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in value if isinstance(v, (list, dict)))
    return False


#: Accepted dtypes (numpy name -> little-endian wire string).
DTYPES = {name: np.dtype(name).newbyteorder("<").str for name in
          ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
           "float32", "float64")}
_WIRE_TO_DTYPE = {v: np.dtype(v) for v in DTYPES.values()}


class WireError(ValueError):
    """A message that does not follow the format (HTTP 400)."""


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> bytes:
    """One message: ``header`` (JSON-serialisable, without ``"arrays"``) plus ``arrays`` by name.

    Arrays are sent in little-endian byte order and C order (copied only when needed).
    """
    if "arrays" in header:
        raise ValueError("header must not contain 'arrays': pass the arrays separately")
    specs, blobs = [], []
    for name, a in (arrays or {}).items():
        a = np.asarray(a)
        key = a.dtype.name
        if key not in DTYPES:
            raise ValueError(f"arrays[{name!r}]: dtype {a.dtype} is not sendable; accepted: {sorted(DTYPES)}")
        a = np.ascontiguousarray(a, dtype=np.dtype(DTYPES[key]))
        specs.append({"name": str(name), "dtype": DTYPES[key], "shape": [int(s) for s in a.shape]})
        blobs.append(memoryview(a).cast("B") if a.size else b"")
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([struct.pack("<I", len(head)), head, *blobs])


def _check_spec(i: int, spec: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(spec, dict) or set(spec) - {"name", "dtype", "shape"} or "dtype" not in spec \
            or "shape" not in spec or "name" not in spec:
        raise WireError(f"header arrays[{i}] must be an object with exactly 'name', 'dtype' and 'shape'")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or not name or len(name) > 64:
        raise WireError(f"header arrays[{i}].name must be a non-empty string of at most 64 characters")
    if dtype not in _WIRE_TO_DTYPE:
        shown = repr(dtype) if isinstance(dtype, str) and len(dtype) <= 8 else "given"
        raise WireError(f"array {name!r}: dtype {shown} is not accepted; accepted (little-endian): "
                        f"{sorted(_WIRE_TO_DTYPE)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2 ** 31 for s in shape):
        raise WireError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} integers in [0, 2**31)")
    return name, _WIRE_TO_DTYPE[dtype], tuple(shape)


def decode(body: bytes | bytearray | memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a message into its header (without ``"arrays"``) and read-only arrays by name.

    Raises
    ------
    WireError
        Truncated or oversized header, invalid JSON, bad array specs, or a body whose length
        differs from what the header announces.
    """
    view = memoryview(body).cast("B")
    if len(view) < 4:
        raise WireError(f"message of {len(view)} bytes is too short: it must start with a 4-byte "
                        "little-endian header length")
    (hlen,) = struct.unpack_from("<I", view, 0)
    if hlen > MAX_HEADER_BYTES or 4 + hlen > len(view):
        raise WireError(f"header length {hlen} is larger than the message ({len(view)} bytes) or than "
                        f"{MAX_HEADER_BYTES} bytes")
    raw = bytes(view[4:4 + hlen])
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f" at byte {exc.start}" if isinstance(exc, UnicodeDecodeError) else f" at line {exc.lineno} column {exc.colno}"
        raise WireError(f"header is not UTF-8 JSON (error{where})") from None
    except RecursionError:
        raise WireError(f"header is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(header, dict):
        raise WireError(f"header must be a JSON object, got {type(header).__name__}")
    if _too_deep(header):
        raise WireError(f"header is nested deeper than {MAX_DEPTH} levels")
    if b"\\u" in raw:  # escapes may encode lone surrogates, which are not text
        try:
            json.dumps(header, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("header holds a lone UTF-16 surrogate escape (e.g. \\ud800): not valid text") from None
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise WireError(f"header 'arrays' must be a list of at most {MAX_ARRAYS} array specs")
    arrays: dict[str, np.ndarray] = {}
    offset = 4 + hlen
    for i, spec in enumerate(specs):
        name, dtype, shape = _check_spec(i, spec)
        if name in arrays:
            raise WireError(f"array {name!r} appears twice in the header")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * dtype.itemsize
        if offset + nbytes > len(view):
            raise WireError(f"array {name!r} {list(shape)} {dtype.str} needs {nbytes} bytes but only "
                            f"{len(view) - offset} remain in the message")
        arrays[name] = np.frombuffer(view, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(view):
        raise WireError(f"message has {len(view) - offset} bytes after the last array; the header announces "
                        f"{offset} bytes in all")
    return header, arrays
