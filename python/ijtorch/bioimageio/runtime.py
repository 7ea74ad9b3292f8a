"""Run an imported bioimage.io package (model folder of type ``"bioimageio"``) in ijtorch's tasks.

The folder written by :func:`ijtorch.bioimageio.package_import.import_bioimageio` holds the
package's files and a ``config.json`` with a summary of its rdf: the input and output axes (type,
id, size as fixed / ``min + k*step`` / reference, channel names, scale, unit, halo), the declared
pre- and post-processing and the task (``segment`` / ``restore`` / ``classify``). This module
needs torch and numpy only (no bioimageio.core at run time, nothing downloaded):

- the weights are a TorchScript archive (``torch.jit.load``) or, for ijtorch's own
  architectures, a safetensors state dict loaded into ijtorch's class (package code is never run);
- pre/post-processing ops are implemented here in numpy as the spec defines them (``scale_range``,
  ``zero_mean_unit_variance``, ``fixed_zero_mean_unit_variance``, ``scale_linear``, ``clip``,
  ``binarize``, ``sigmoid``, ``softmax``, ``ensure_dtype``; ``scale_mean_variance`` and
  model-specific ones such as ``stardist_postprocessing`` are refused at import);
- images larger than one tile are predicted in overlapping tiles whose sizes are valid for the
  input (``min + k*step``), the overlap twice the output halo, stitched by cropping.

Outputs: ``segment`` turns a one-channel output into instances (connected components of
``output > threshold``, default 0.5 or the declared ``binarize`` threshold) and a multi-channel
output into a semantic label map (``argmax`` over channels; label = channel index, channel 0 is
usually background); ``restore`` returns the output itself (a restored image or probability
images, one per output channel); ``classify`` returns per-class probabilities.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ijtorch.errors import ModelError

__all__ = ["MODEL_TYPE", "BioimageioModel", "apply_processing", "SUPPORTED_PROCESSING"]

log = logging.getLogger(__name__)

MODEL_TYPE = "bioimageio"
SUPPORTED_PROCESSING = ("scale_range", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_linear",
                        "clip", "binarize", "sigmoid", "softmax", "ensure_dtype")


# ------------------------------------------------------------------------------ processing
def _axes_idx(tensor_axes: list[str], axes: Any) -> tuple[int, ...] | None:
    if axes is None:
        return None
    return tuple(tensor_axes.index(a) for a in axes if a in tensor_axes)


def _along(tensor_axes: list[str], axis: str | None, values: Any, ndim: int) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if axis is None or v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[tensor_axes.index(axis)] = v.size
    return v.reshape(shape)


def apply_processing(x: np.ndarray, tensor_axes: list[str], steps: list[dict[str, Any]]) -> np.ndarray:
    """Apply spec pre/post-processing ``steps`` (``{"id", "kwargs"}``) to ``x`` (axes ``tensor_axes``)."""
    for step in steps:
        op, kw = step["id"], step.get("kwargs") or {}
        if op == "ensure_dtype":
            x = x.astype(kw.get("dtype", "float32"))
        elif op == "scale_range":
            ax = _axes_idx(tensor_axes, kw.get("axes"))
            xf = x.astype(np.float32, copy=False)
            lo = np.percentile(xf, float(kw.get("min_percentile", 0.0)), axis=ax, keepdims=True)
            hi = np.percentile(xf, float(kw.get("max_percentile", 100.0)), axis=ax, keepdims=True)
            x = (xf - lo) / (hi - lo + np.float32(kw.get("eps", 1e-6)))
        elif op == "zero_mean_unit_variance":
            ax = _axes_idx(tensor_axes, kw.get("axes"))
            xf = x.astype(np.float32, copy=False)
            x = (xf - xf.mean(axis=ax, keepdims=True)) / (xf.std(axis=ax, keepdims=True) + np.float32(kw.get("eps", 1e-6)))
        elif op == "fixed_zero_mean_unit_variance":
            mean = _along(tensor_axes, kw.get("axis"), kw["mean"], x.ndim)
            std = _along(tensor_axes, kw.get("axis"), kw["std"], x.ndim)
            x = ((x - mean) / (std + kw.get("eps", 1e-6))).astype(np.float32)
        elif op == "scale_linear":
            gain = _along(tensor_axes, kw.get("axis"), kw.get("gain", 1.0), x.ndim)
            offset = _along(tensor_axes, kw.get("axis"), kw.get("offset", 0.0), x.ndim)
            x = (x * gain + offset).astype(np.float32)
        elif op == "clip":
            x = np.clip(x, kw.get("min"), kw.get("max"))
        elif op == "binarize":
            thr = _along(tensor_axes, kw.get("axis"), kw.get("threshold", 0.5), x.ndim)
            x = (x > thr).astype(np.float32)
        elif op == "sigmoid":
            x = (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)
        elif op == "softmax":
            ax = tensor_axes.index(kw.get("axis", "channel"))
            z = x - x.max(axis=ax, keepdims=True)
            e = np.exp(z)
            x = (e / e.sum(axis=ax, keepdims=True)).astype(np.float32)
        else:
            raise ModelError(f"processing step {op!r} is not supported by ijtorch (supported: {SUPPORTED_PROCESSING})")
    return x


# ------------------------------------------------------------------------------------ model
class BioimageioModel:
    """An imported bioimage.io model: its network and the rdf summary in ``config["bioimageio"]``."""

    is_bioimageio = True
    model_type = MODEL_TYPE

    def __init__(self, md: Any, *, device: str = "cpu") -> None:
        import torch

        self.path = Path(md.path)
        self.config = dict(md.config)
        self.device = device
        self.rdf = self.config["bioimageio"]
        weights = self.config["weights"]
        wfile = self.path / weights["file"]
        if weights.get("format") == "torchscript":
            self.module = torch.jit.load(str(wfile), map_location=device).eval()
        elif weights.get("format") == "safetensors":
            from ._wrappers import WRAPPERS

            arch = self.rdf["architecture"]
            if arch["callable"] not in WRAPPERS:
                raise ModelError(f"{self.path}: architecture {arch['callable']!r} is not an ijtorch architecture")
            net = WRAPPERS[arch["callable"]](**arch.get("kwargs", {}))
            net.load_state_dict(md.state_dict)
            self.module = net.to(device).eval()
        else:
            raise ModelError(f"{self.path}: weights format {weights.get('format')!r} is unknown")
        self.input = self.rdf["inputs"][0]
        self.output = self.rdf["outputs"][0]
        self.task = self.config.get("task", "segment")

    # ----------------------------------------------------------------- axes
    @property
    def in_axes(self) -> list[str]:
        return [a["id"] for a in self.input["axes"]]

    @property
    def out_axes(self) -> list[str]:
        return [a["id"] for a in self.output["axes"]]

    @property
    def spatial(self) -> list[str]:
        """Spatial axis ids of the input, e.g. ``["y", "x"]``."""
        return [a["id"] for a in self.input["axes"] if a["type"] in ("space", "time")]

    @property
    def n_in_channels(self) -> int:
        for a in self.input["axes"]:
            if a["type"] == "channel":
                return len(a["channel_names"])
        return 0

    @property
    def classes(self) -> list[str]:
        for a in self.output["axes"]:
            if a["type"] == "channel":
                return [str(c) for c in a["channel_names"]]
        return []

    @property
    def thresholds(self) -> dict[str, float]:
        return {"prob": float(self.config.get("threshold", 0.5)), "nms": 0.0}

    def _axis(self, tensor: dict[str, Any], axis_id: str) -> dict[str, Any]:
        return next(a for a in tensor["axes"] if a["id"] == axis_id)

    def _same_shape(self, axis_id: str) -> bool:
        out = self._axis(self.output, axis_id)
        size = out.get("size")
        return (isinstance(size, dict) and size.get("axis_id") == axis_id and not size.get("offset")
                and float(out.get("scale", 1.0)) == float(self._axis(self.input, axis_id).get("scale", 1.0)))

    def _valid_size(self, axis_id: str, n: int) -> int:
        """Smallest valid input size >= n along a spatial axis."""
        size = self._axis(self.input, axis_id)["size"]
        if isinstance(size, int):
            return size
        if isinstance(size, dict) and "min" in size:
            lo, step = int(size["min"]), int(size.get("step") or 0)
            if n <= lo or step == 0:
                return lo
            return lo + -(-(n - lo) // step) * step
        raise ModelError(f"{self.path}: input axis {axis_id!r} has a size ijtorch cannot choose ({size!r})")

    # --------------------------------------------------------------- predict
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out.float().cpu().numpy()

    def predict_tensor(self, x: np.ndarray, *, tile_size: int | None = None, overlap: int | None = None,
                       progress: Callable | None = None, cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Raw input tensor in the rdf's input axes (batch first) → postprocessed output tensor.

        The declared preprocessing runs on the whole tensor (so percentiles are those of the whole
        image), then the network runs whole or in tiles. Run whole, the input is first padded
        symmetrically by the output halo and the halo cropped from the output afterwards, as
        bioimageio.core does (its default ``pad`` mode), so that both agree to float precision.
        """
        x = np.asarray(x)
        spatial_idx = [self.in_axes.index(a) for a in self.spatial]
        same_shape = all(a in self.out_axes and self._same_shape(a) for a in self.spatial)
        tile = int(tile_size or 512)
        fixed = any(isinstance(self._axis(self.input, a)["size"], int) for a in self.spatial)
        needs_tiles = not fixed and same_shape and any(
            x.shape[i] > self._valid_size(a, tile) for a, i in zip(self.spatial, spatial_idx))
        halo = {a: int(self._axis(self.output, a).get("halo", 0) or 0) for a in self.spatial if a in self.out_axes}
        halo = {a: h for a, h in halo.items() if h > 0} if same_shape and not needs_tiles else {}
        if halo:
            x = np.pad(x, [(halo.get(a, 0),) * 2 for a in self.in_axes], mode="symmetric")
        x = apply_processing(x, self.in_axes, self.input.get("preprocessing", []))
        x = x.astype(np.float32, copy=False)
        if needs_tiles:
            y = self._run_tiled(x, tile, overlap, progress, cancel)
        else:
            valid = [self._valid_size(a, x.shape[i]) for a, i in zip(self.spatial, spatial_idx)]
            y = self._run_padded(x, spatial_idx, valid)
        if halo:
            y = y[tuple(slice(halo[a], y.shape[k] - halo[a]) if a in halo else slice(None)
                        for k, a in enumerate(self.out_axes))]
        return apply_processing(y, self.out_axes, self.output.get("postprocessing", []))

    def _run_padded(self, x: np.ndarray, spatial_idx: list[int], valid: list[int]) -> np.ndarray:
        pads = [(0, 0)] * x.ndim
        for i, v in zip(spatial_idx, valid):
            if v < x.shape[i]:  # fixed-size input smaller than the image
                raise ValueError(f"the image is {x.shape[i]} pixels along axis {self.in_axes[i]!r}; this model "
                                 f"takes exactly {v}")
            pads[i] = (0, v - x.shape[i])
        xp = np.pad(x, pads, mode="reflect" if all(p[1] < s for p, s in zip(pads, x.shape)) else "constant")
        y = self._forward(xp)
        if any(p[1] for p in pads):
            keep = [slice(None)] * y.ndim
            for a, i in zip(self.spatial, spatial_idx):
                if a in self.out_axes:
                    j = self.out_axes.index(a)
                    keep[j] = slice(0, int(round(x.shape[i] * y.shape[j] / xp.shape[i])))
            y = y[tuple(keep)]
        return y

    def _run_tiled(self, x: np.ndarray, tile: int, overlap: int | None, progress: Callable | None,
                   cancel: Callable[[], bool] | None) -> np.ndarray:
        from ijtorch.core.tiling import predict_tiled

        src = ["channel"] + self.spatial
        arr, ids = x, list(self.in_axes)
        if "batch" in ids:
            if arr.shape[ids.index("batch")] != 1:
                raise ValueError("tiled prediction takes one image at a time")
            arr = np.take(arr, 0, axis=ids.index("batch"))
            ids.remove("batch")
        if "channel" not in ids:
            arr, ids = arr[None], ["channel"] + ids
        xt = np.transpose(arr, [ids.index(a) for a in src])
        steps = [int((self._axis(self.input, a)["size"] or {}).get("step") or 1) for a in self.spatial]
        tiles = [self._valid_size(a, tile) for a in self.spatial]
        halo = max([int(self._axis(self.output, a).get("halo", 0) or 0) for a in self.spatial if a in self.out_axes]
                   or [0])
        ov = overlap if overlap is not None else max(2 * halo, 32)

        def fn(batch: np.ndarray) -> np.ndarray:
            outs = []
            for item in batch:
                a, s = item, list(src)
                if "channel" not in self.in_axes:
                    a, s = a[0], s[1:]
                if "batch" in self.in_axes:
                    a, s = a[None], ["batch"] + s
                outs.append(self._spatial_out(self._forward(np.transpose(a, [s.index(k) for k in self.in_axes]))))
            return np.stack(outs)

        y = predict_tiled(fn, xt, tile_shape=tiles, overlap=[min(ov, t // 2) for t in tiles],
                          out_channels=len(self.classes) or 1, size_multiple=steps, batch_size=1, blend="crop",
                          progress=progress, cancel=cancel)
        # (C, *spatial) → the output tensor's axes
        s = ["channel"] + self.spatial
        if "channel" not in self.out_axes:
            y, s = y[0], s[1:]
        if "batch" in self.out_axes:
            y, s = y[None], ["batch"] + s
        return np.transpose(y, [s.index(a) for a in self.out_axes])

    def _out_order(self) -> list[int]:
        ids = self.out_axes
        first = [ids.index(a) for a in ("batch", "channel") if a in ids]
        return first + [ids.index(a) for a in self.spatial if a in ids]

    # ------------------------------------------------------------- image in
    def _items(self, data: np.ndarray, axes: str, channel: int | None) -> tuple[list[np.ndarray], str, tuple[int, ...], list[int]]:
        """Split an ijtorch image (axes from TZCYX) into model inputs (rdf input axes, batch 1)."""
        from ijtorch.image import check_axes

        axes = check_axes(axes, data.ndim)
        model_sp = "".join(a.upper() for a in self.spatial if a in ("x", "y", "z"))
        if "t" in self.spatial:
            raise ModelError(f"{self.path}: models with a time input axis are not supported")
        missing = [a for a in model_sp if a not in axes]
        if missing:
            raise ValueError(f"this model needs axes {model_sp!r}; the image has {axes!r}")
        nc = self.n_in_channels
        if "C" in axes:
            ci = axes.index("C")
            if channel is not None:
                data, axes = np.take(data, [int(channel)], axis=ci), axes
            if data.shape[axes.index("C")] != max(nc, 1):
                raise ValueError(f"the image has {data.shape[axes.index('C')]} channels; this model takes {nc}"
                                 + (" (pass channel=)" if nc == 1 else ""))
        else:
            if nc > 1:
                raise ValueError(f"this model takes {nc} channels; the image has no C axis")
            data, axes = data[None], "C" + axes
        outer = "".join(a for a in "TZ" if a in axes and a not in model_sp)
        canonical = outer + "C" + model_sp
        perm = [axes.index(a) for a in canonical]
        stack = np.transpose(data, perm)
        outer_shape = stack.shape[: len(outer)]
        flat = stack.reshape((-1,) + stack.shape[len(outer):])
        items = []
        for item in flat:  # (C, *spatial) → rdf input axes
            named = {"channel": item}
            order_src = ["channel"] + [a.lower() for a in model_sp]
            arr = item
            if "batch" in self.in_axes:
                arr, order_src = arr[None], ["batch"] + order_src
            if "channel" not in self.in_axes:
                arr, order_src = arr[(slice(None),) * order_src.index("channel") + (0,)], [a for a in order_src if a != "channel"]
            del named
            items.append(np.transpose(arr, [order_src.index(a) for a in self.in_axes]))
        return items, canonical, outer_shape, perm

    def _spatial_out(self, y: np.ndarray) -> np.ndarray:
        """Output tensor → ``(C, *spatial)``."""
        yt = np.transpose(y, self._out_order())
        if "batch" in self.out_axes:
            yt = yt[0]
        if "channel" not in self.out_axes:
            yt = yt[None]
        return yt

    def predict_image(self, data: np.ndarray, axes: str, *, channel: int | None = None, tile_size: int | None = None,
                      overlap: int | None = None, progress: Callable | None = None,
                      cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, str]:
        """Output maps of an image: ``(array, axes)`` with ``C`` for the output channels (TZCYX order)."""
        from ijtorch.core.progress import ProgressEvent, emit

        items, canonical, outer_shape, perm = self._items(data, axes, channel)
        outs = []
        for k, item in enumerate(items):
            if cancel is not None and cancel():
                raise InterruptedError("prediction cancelled")
            emit(progress, ProgressEvent("plane", k, len(items), f"plane {k + 1}/{len(items)}"))
            outs.append(self._spatial_out(self.predict_tensor(item, tile_size=tile_size, overlap=overlap,
                                                              progress=progress, cancel=cancel)))
        emit(progress, ProgressEvent("plane", len(items), len(items), "done"))
        arr = np.stack(outs).reshape(outer_shape + outs[0].shape)  # outer + C + spatial
        out_axes = canonical  # same letters: outer, C, spatial
        order = sorted(range(len(out_axes)), key=lambda i: "TZCYX".index(out_axes[i]))
        return np.ascontiguousarray(np.transpose(arr, order)), "".join(out_axes[i] for i in order)

    # --------------------------------------------------------------- tasks
    def segment(self, data: np.ndarray, axes: str, *, channel: int | None = None, prob_threshold: float | None = None,
                model: Any = "", progress: Callable | None = None, cancel: Callable[[], bool] | None = None,
                t0: float | None = None, **_: Any) -> Any:
        """Label map (instances from one channel, classes from several) as a ``SegmentationResult``."""
        from scipy import ndimage as ndi

        from ijtorch.tasks.segment import SegmentationResult

        t0 = time.monotonic() if t0 is None else t0
        maps, maxes = self.predict_image(data, axes, channel=channel, progress=progress, cancel=cancel)
        ci = maxes.index("C")
        thr = self.thresholds["prob"] if prob_threshold is None else float(prob_threshold)
        counts = []
        if maps.shape[ci] == 1:
            fg = np.take(maps, 0, axis=ci) > thr
            rest = maxes.replace("C", "")
            model_sp = "".join(a.upper() for a in self.spatial)
            outer = [i for i, a in enumerate(rest) if a not in model_sp]
            labels = np.zeros(fg.shape, np.int64)
            offset = 0
            for idx in np.ndindex(*[fg.shape[i] for i in outer]):
                sl = [slice(None)] * fg.ndim
                for i, v in zip(outer, idx):
                    sl[i] = v  # type: ignore[call-overload]
                lab, n = ndi.label(fg[tuple(sl)])
                lab[lab > 0] += offset
                labels[tuple(sl)] = lab
                offset += n
                counts.append(n)
            n_objects = offset
        else:
            labels = np.argmax(maps, axis=ci).astype(np.int64)
            n_objects = int(len(np.unique(labels[labels > 0])))
            counts = [n_objects]
        dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
        name = Path(str(model)).name or self.path.name
        return SegmentationResult(labels=labels.astype(dtype), axes=maxes.replace("C", ""), n_objects=int(n_objects),
                                  model=name, prob_threshold=thr, nms_threshold=0.0,
                                  seconds=time.monotonic() - t0, device=self.device, objects_per_plane=tuple(counts))

    def restore(self, data: np.ndarray, axes: str, *, channel: int | None = None, tile_size: int | None = None,
                overlap: int | None = None, tiled: bool = True, model: Any = "", progress: Callable | None = None,
                cancel: Callable[[], bool] | None = None, t0: float | None = None, **_: Any) -> Any:
        """The output image(s) as a ``RestorationResult`` (``C`` kept when the output has several channels)."""
        from ijtorch.tasks.restore import RestorationResult

        t0 = time.monotonic() if t0 is None else t0
        maps, maxes = self.predict_image(data, axes, channel=channel, tile_size=tile_size if tiled else 1 << 30,
                                         overlap=overlap, progress=progress, cancel=cancel)
        if maps.shape[maxes.index("C")] == 1:
            maps, maxes = np.take(maps, 0, axis=maxes.index("C")), maxes.replace("C", "")
        name = Path(str(model)).name or self.path.name
        return RestorationResult(restored=maps.astype(np.float32), axes=maxes, model=name, model_type=MODEL_TYPE,
                                 seconds=time.monotonic() - t0, device=self.device)

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 64, prepared: bool = False) -> np.ndarray:
        """``(N, C, *spatial)`` crops → ``(N, K)`` class probabilities (crops resampled to the input size)."""
        from scipy import ndimage as ndi

        images = np.asarray(images, np.float32)
        sizes = []
        for a in self.spatial:
            s = self._axis(self.input, a)["size"]
            sizes.append(int(s) if isinstance(s, int) else None)
        if images.ndim != 2 + len(self.spatial):
            raise ValueError(f"images must have shape (N, C, {', '.join(a.upper() for a in self.spatial)}), "
                             f"got {images.shape}")
        target = [s if s is not None else images.shape[2 + i] for i, s in enumerate(sizes)]
        if list(images.shape[2:]) != target:
            factors = (1, 1) + tuple(t / s for t, s in zip(target, images.shape[2:]))
            images = ndi.zoom(images, factors, order=1, grid_mode=True, mode="nearest")
        out = []
        for item in images:
            arr = item
            src = ["channel"] + self.spatial
            if "batch" in self.in_axes:
                arr, src = arr[None], ["batch"] + src
            y = self.predict_tensor(np.transpose(arr, [src.index(a) for a in self.in_axes]))
            y = np.asarray(y, np.float32).reshape(-1)
            if y.min() < 0 or abs(float(y.sum()) - 1.0) > 1e-3:
                e = np.exp(y - y.max())
                y = e / e.sum()
            out.append(y)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, len(self.classes)), np.float32)

    def embed(self, images: np.ndarray, **_: Any) -> np.ndarray:
        raise ModelError("embeddings are not available for imported bioimage.io models")


def build(md: Any, device: str) -> BioimageioModel:
    """Store builder for ``model_type="bioimageio"``."""
    return BioimageioModel(md, device=device)
