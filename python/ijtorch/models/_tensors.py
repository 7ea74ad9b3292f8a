"""numpy arrays with named axes <-> torch tensors in the layout networks expect.

Layout
------
``numpy_to_torch`` turns an array with axes from ``TZCYX`` (``S`` for RGB samples allowed) into

- ``(N, C, H, W)`` when there is no Z axis,
- ``(N, C, D, H, W)`` when there is one,

where N is the T axis (1 without T), C is the C axis, or S for RGB when there is no C (1 without
either; C and S together are refused), D is Z, H is Y and W is X. ``torch_to_numpy(tensor, axes)``
is the inverse: ``axes`` names the numpy layout wanted, N must be 1 unless ``axes`` has T and C
must be 1 unless ``axes`` has C or S. Y, X and Z sizes may differ from the input's (network
outputs); the channel count may too when ``axes`` has C.

Dtype table (``dtype=None``)
----------------------------
Values are never rescaled; normalisation is the caller's explicit step.

=========================================  =====================  ===========================
numpy                                      torch                  back to numpy
=========================================  =====================  ===========================
bool, uint8, int8, int16, int32, int64     same                   same
float16, float32, float64                  same                   same
uint16                                     int32 (exact)          int32
uint32                                     int64 (exact)          int64
uint64                                     int64 if max < 2**63,  int64
                                           else ValueError
other (complex, object, ...)               ValueError             --
torch bfloat16                             --                     float32 (exact)
=========================================  =====================  ===========================

torch's own uint16/uint32 types support few operations, hence the widening. An explicit
``dtype`` (a ``torch.dtype``) casts to that type instead, as ``Tensor.to`` does.

Both functions return data that shares no memory with their input. torch is imported lazily.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..image import check_axes, to_axes

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["numpy_to_torch", "torch_to_numpy", "TORCH_DTYPES"]

log = logging.getLogger(__name__)

#: numpy dtype name -> torch dtype name used when ``dtype=None``.
TORCH_DTYPES = {
    "bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16", "int32": "int32",
    "int64": "int64", "float16": "float16", "float32": "float32", "float64": "float64",
    "uint16": "int32", "uint32": "int64", "uint64": "int64",
}


def _channel_letter(axes: str) -> str | None:
    if "C" in axes and "S" in axes:
        raise ValueError(f"axes={axes!r}: C and S both present; a tensor has one channel axis. "
                         "Move the RGB samples into C first")
    return "C" if "C" in axes else ("S" if "S" in axes else None)


def _tensor_axes(axes: str) -> str:
    """The numpy-side letters of the tensor layout for ``axes``: ``T{C|S}[Z]YX``."""
    return "T" + (_channel_letter(axes) or "C") + ("Z" if "Z" in axes else "") + "YX"


def numpy_to_torch(data: np.ndarray, axes: str, *, device: Any = "cpu", dtype: Any = None) -> "torch.Tensor":
    """Copy ``data`` into a new tensor laid out NCHW (no Z) or NCDHW (with Z).

    Parameters
    ----------
    data
        Array of any memory layout.
    axes
        One letter per dimension of ``data`` from ``TZCYX`` (``S`` last for RGB), Y and X required.
    device
        Where the tensor goes (``"cpu"``, ``"cuda:0"``, a ``torch.device``); logged at DEBUG.
    dtype
        A ``torch.dtype`` to cast to; ``None`` follows the module's dtype table.

    Returns
    -------
    torch.Tensor
        Contiguous, sharing no memory with ``data``.

    Raises
    ------
    ValueError
        Bad ``axes`` (unknown or repeated letters, wrong count, C and S together) or a dtype
        with no exact torch equivalent.
    TypeError
        ``data`` is not a numpy array, or ``dtype`` is not a ``torch.dtype``.

    Examples
    --------
    >>> numpy_to_torch(np.zeros((5, 2, 64, 32), np.uint16), "ZCYX").shape  # doctest: +SKIP
    torch.Size([1, 2, 5, 64, 32])
    """
    import torch

    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype (e.g. torch.float32) or None, got {dtype!r}")
    axes = check_axes(axes, data.ndim)
    target = _tensor_axes(axes)
    name = data.dtype.name if data.dtype.isnative else data.dtype.newbyteorder("=").name
    if name not in TORCH_DTYPES:
        raise ValueError(f"data: dtype {data.dtype} has no torch equivalent; accepted: {', '.join(TORCH_DTYPES)}")
    if name == "uint64" and data.size and int(data.max()) >= 2 ** 63:
        raise ValueError(f"data: uint64 value {int(data.max())} does not fit torch.int64; accepted: uint64 below 2**63")
    arranged = to_axes(data, axes, target)
    array = np.array(arranged, dtype=np.dtype(TORCH_DTYPES[name]), order="C", copy=True)
    tensor = torch.from_numpy(array)
    tensor = tensor.to(device=device, dtype=dtype) if dtype is not None else tensor.to(device=device)
    log.debug("numpy %s %s %s -> tensor %s %s on %s", axes, data.shape, data.dtype,
              tuple(tensor.shape), tensor.dtype, tensor.device)
    return tensor


def torch_to_numpy(tensor: "torch.Tensor", axes: str) -> np.ndarray:
    """Copy an NCHW / NCDHW tensor back into a numpy array laid out in ``axes``.

    Parameters
    ----------
    tensor
        4-D ``(N, C, H, W)`` when ``axes`` has no Z, 5-D ``(N, C, D, H, W)`` when it has one; any
        device; gradients are dropped.
    axes
        The numpy layout wanted, letters from ``TZCYX`` (``S`` last for RGB). N must be 1 unless
        ``axes`` has T; C must be 1 unless ``axes`` has C or S.

    Returns
    -------
    numpy.ndarray
        C-contiguous, sharing no memory with ``tensor``; dtype per the module's table.

    Raises
    ------
    ValueError
        Bad ``axes`` or a tensor whose shape does not fit them.
    TypeError
        ``tensor`` is not a torch tensor.
    """
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'YX' or 'TZCYX', got {type(axes).__name__}")
    axes = check_axes(axes, len(axes))
    source = _tensor_axes(axes)
    if tensor.ndim != len(source):
        layout = "(N, C, D, H, W)" if "Z" in axes else "(N, C, H, W)"
        raise ValueError(f"tensor has shape {tuple(tensor.shape)}; axes={axes!r} needs a {len(source)}-D "
                         f"tensor {layout}")
    n, c = int(tensor.shape[0]), int(tensor.shape[1])
    if "T" not in axes and n != 1:
        raise ValueError(f"tensor has batch size N={n} but axes={axes!r} has no T; add T to axes")
    if _channel_letter(axes) is None and c != 1:
        raise ValueError(f"tensor has {c} channels but axes={axes!r} has no C; add C to axes")
    if "S" in axes and c != 3:
        raise ValueError(f"tensor has {c} channels but axes={axes!r} asks for RGB samples (S = 3)")
    t = tensor.detach()
    if t.dtype == torch.bfloat16:
        t = t.to(torch.float32)
    array = t.cpu().numpy()
    # Drop N / C when axes lacks them (both checked to be 1 above), then reorder.
    array = array.squeeze(axis=tuple(i for i, a in enumerate(source) if a not in axes))
    kept = [a for a in source if a in axes]
    return np.array(array.transpose([kept.index(a) for a in axes]), order="C", copy=True)
