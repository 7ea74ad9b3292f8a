"""Import a local bioimage.io model package as a registered ijtorch model.

:func:`import_bioimageio` reads a package (``.zip`` or a folder with ``rdf.yaml``; format 0.4
packages are upgraded by bioimageio.spec) and writes a model folder in
:func:`ijtorch.models.store.user_models_dir`:

- a package exported by ijtorch (``config.ijtorch`` names an ijtorch model type and its
  ``pytorch_state_dict`` uses an ijtorch architecture) becomes the original ijtorch model again
  (same ``model_type``, thresholds, normalisation; weights as safetensors), so ``segment()``
  with NMS / watershed, ``restore()`` and ``classify()`` behave exactly as before export;
- any other package becomes a ``model_type="bioimageio"`` folder run by
  :mod:`ijtorch.bioimageio.runtime` with its declared axes, tiling and pre/post-processing.

Safety: nothing is downloaded (a package whose weights or tensors are URLs is refused), package
code is never executed and arbitrary pickles are never loaded. ijtorch runs either the
TorchScript weights (``torch.jit.load``), or ``pytorch_state_dict`` weights whose architecture
callable is one of ijtorch's own (built from ijtorch's classes, not from the package's source),
read with ``torch.load(weights_only=True)`` (tensors only) and stored as safetensors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ijtorch.errors import ModelError

from .runtime import MODEL_TYPE, SUPPORTED_PROCESSING

__all__ = ["import_bioimageio", "ImportResult", "TASKS"]

log = logging.getLogger(__name__)

TASKS = ("segment", "restore", "classify")
_NATIVE = {"stardist2d", "stardist3d", "unet_watershed", "care", "n2v", "n2n", "artificial_labelling", "classifier"}
_RESTORE_TAGS = {"restoration", "denoising", "deconvolution", "super-resolution", "image-restoration",
                 "image-reconstruction", "noise2void", "n2v", "care", "content-aware-image-restoration"}
_CLASSIFY_TAGS = {"classification", "image-classification"}


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_bioimageio` returns."""

    path: Path
    name: str
    model_type: str
    task: str
    weights_format: str


def _safe_extract(zip_path: Path, dest: Path) -> None:
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = (dest / info.filename).resolve()
            if not str(target).startswith(str(dest.resolve()) + os.sep) and target != dest.resolve():
                raise ModelError(f"{zip_path}: entry {info.filename!r} points outside the package; refusing it")
        zf.extractall(dest)


def _find_rdf(folder: Path) -> Path:
    for name in ("rdf.yaml", "bioimageio.yaml"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.bioimageio.yaml")) + sorted(folder.glob("*/rdf.yaml"))
    if found:
        return found[0]
    raise ModelError(f"{folder}: no rdf.yaml (bioimage.io description) found")


def _local(folder: Path, source: Any, what: str, sha256: str | None = None) -> Path:
    text = str(source)
    if text.startswith(("http://", "https://")):
        raise ModelError(f"{what} is a URL ({text}); ijtorch imports local packages only and downloads nothing — "
                         "download the package (with all its files) first")
    path = (folder / text).resolve()
    if not path.is_file():
        raise ModelError(f"{what} {text!r} is missing from the package")
    if sha256:
        from ijtorch.models.store import sha256_file

        if sha256_file(path) != str(sha256):
            raise ModelError(f"{what} {text!r}: SHA-256 differs from the rdf's; the package is corrupt or was modified")
    return path


def _infer_task(descr_json: dict[str, Any]) -> str:
    tags = {str(t).lower() for t in descr_json.get("tags", [])}
    out_types = [a["type"] for a in descr_json["outputs"][0]["axes"]]
    if not any(t in ("space", "time") for t in out_types) or tags & _CLASSIFY_TAGS:
        return "classify"
    if tags & _RESTORE_TAGS:
        return "restore"
    return "segment"


def _check_supported(descr_json: dict[str, Any]) -> None:
    inputs = [t for t in descr_json["inputs"] if not t.get("optional")]
    if len(inputs) != 1:
        raise ModelError(f"the package has {len(inputs)} required inputs; ijtorch runs single-input models")
    for kind, tensors in (("preprocessing", descr_json["inputs"][:1]), ("postprocessing", descr_json["outputs"][:1])):
        for step in tensors[0].get(kind) or []:
            if step["id"] not in SUPPORTED_PROCESSING:
                raise ModelError(f"{kind} step {step['id']!r} of tensor {tensors[0]['id']!r} is not supported by "
                                 f"ijtorch (supported: {', '.join(SUPPORTED_PROCESSING)})")
            ref = (step.get("kwargs") or {}).get("reference_tensor")
            if ref and ref != tensors[0]["id"]:
                raise ModelError(f"{kind} step {step['id']!r} refers to tensor {ref!r}; not supported")
    for a in descr_json["inputs"][0]["axes"]:
        if a["type"] in ("time", "index"):
            raise ModelError(f"input axis {a['id']!r} of type {a['type']!r} is not supported (space, channel, batch)")


def import_bioimageio(source: str | os.PathLike, *, name: str | None = None, task: str | None = None,
                      overwrite: bool = False, threshold: float | None = None) -> ImportResult:
    """Turn a local bioimage.io package into a registered ijtorch model.

    Parameters
    ----------
    source : path
        A package ``.zip`` or a folder holding ``rdf.yaml`` and the files it names.
    name : str, optional
        Model name in ``$IJTORCH_MODELS`` (default: the package's name, made file-safe).
    task : {"segment", "restore", "classify"}, optional
        Which ijtorch task runs a foreign model (default: from its outputs and tags: no spatial
        output axes → classify; restoration/denoising tags → restore; otherwise segment).
    overwrite : bool
        Replace an existing user model of that name.
    threshold : float, optional
        Foreground threshold for one-channel segmentation outputs (default 0.5, or the package's
        ``binarize`` threshold).
    """
    from ijtorch.models.folder import config_text
    from ijtorch.models.store import (CONFIG_NAME, clear_model_cache, new_user_model_dir, publish_model_folder,
                                      sha256_file)

    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r}: accepted values are {TASKS}")
    src = Path(source).expanduser()
    if not src.exists():
        raise ModelError(f"{src}: no such package file or folder")
    tmp_root = Path(tempfile.mkdtemp(prefix=".ijtorch-import-"))
    try:
        if src.is_file():
            if not zipfile.is_zipfile(src):
                raise ModelError(f"{src}: not a zip file; give a bioimage.io package .zip or its folder")
            folder = tmp_root / "package"
            folder.mkdir()
            _safe_extract(src, folder)
        else:
            folder = src
        rdf = _find_rdf(folder)
        folder = rdf.parent
        dj = _read_rdf(rdf, src)
        model_name = name or "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(dj["name"])).strip("-")
        target = new_user_model_dir(model_name)
        if target.exists() and not overwrite:
            raise ModelError(f"a user model called {model_name!r} exists ({target}); choose --name or overwrite")
        cfg_ij = (dj.get("config") or {}).get("ijtorch")
        weights = dj.get("weights") or {}
        sd_w, ts_w = weights.get("pytorch_state_dict"), weights.get("torchscript")
        from .architecture import ARCHITECTURE_CALLABLES

        known_arch = bool(sd_w) and str((sd_w.get("architecture") or {}).get("callable")) in ARCHITECTURE_CALLABLES
        build = tmp_root / "model"
        build.mkdir()
        if isinstance(cfg_ij, dict) and cfg_ij.get("model_type") in _NATIVE and known_arch and task is None:
            result = _import_native(folder, dj, cfg_ij, sd_w, build, model_name, target)
        else:
            _check_supported(dj)
            result = _import_generic(folder, dj, sd_w if known_arch else None, ts_w, build, model_name, target,
                                     task or _infer_task(dj), threshold)
        for extra in ("README.md",):
            doc = dj.get("documentation")
            doc_src = doc.get("source") if isinstance(doc, dict) else doc
            if doc_src and not str(doc_src).startswith("http") and (folder / str(doc_src)).is_file():
                shutil.copy2(folder / str(doc_src), build / extra)
        shutil.copy2(rdf, build / "rdf.yaml")
        cfg = json.loads((build / CONFIG_NAME).read_text())
        cfg["weights"]["sha256"] = sha256_file(build / cfg["weights"]["file"])
        cfg["weights"]["bytes"] = (build / cfg["weights"]["file"]).stat().st_size
        (build / CONFIG_NAME).write_text(config_text(cfg))
        publish_model_folder(build, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    clear_model_cache()
    log.info("imported %s as %s (%s, task %s)", src, target, result.model_type, result.task)
    return result


_AXIS_IDS = {"batch": "batch", "channel": "channel", "index": "index", "time": "time", "space": "x"}


def _read_rdf(rdf: Path, src: Path) -> dict[str, Any]:
    """The rdf as a dict in format 0.5 form.

    A 0.5 file is read with PyYAML and checked for what ijtorch uses (fast: importing
    bioimageio.spec costs seconds of CPU); anything else (0.4 files, which bioimageio.spec
    upgrades, or a file that does not look right) goes through ``bioimageio.spec.load_description``,
    whose errors are reported.
    """
    import yaml

    try:
        raw = yaml.safe_load(rdf.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ModelError(f"{src}: rdf.yaml is not valid YAML: {e}") from e
    if (isinstance(raw, dict) and raw.get("type") == "model" and str(raw.get("format_version", "")).startswith("0.5.")
            and isinstance(raw.get("inputs"), list) and isinstance(raw.get("outputs"), list) and raw["inputs"]
            and raw["outputs"] and isinstance(raw.get("weights"), dict)
            and all(isinstance(t, dict) and isinstance(t.get("axes"), list) for t in raw["inputs"] + raw["outputs"])):
        for t in raw["inputs"] + raw["outputs"]:
            for a in t["axes"]:
                if not isinstance(a, dict) or a.get("type") not in _AXIS_IDS:
                    raise ModelError(f"{src}: tensor {t.get('id')!r} has an axis without a known type: {a!r}")
                a.setdefault("id", _AXIS_IDS[a["type"]])
            for kind in ("preprocessing", "postprocessing"):
                for step in t.get(kind) or []:
                    step.setdefault("kwargs", {})
        raw.setdefault("name", rdf.parent.name)
        return raw
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(rdf, perform_io_checks=False, format_version="latest")
    if isinstance(descr, InvalidDescr):
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in descr.validation_summary.details
                  for e in d.errors][:3]
        raise ModelError(f"{src}: not a valid bioimage.io description: {'; '.join(errors)}")
    if getattr(descr, "type", None) != "model":
        raise ModelError(f"{src}: describes a {getattr(descr, 'type', '?')!r}, not a model")
    return descr.model_dump(mode="json")


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError subclasses for anything but tensors
        raise ModelError(f"{path.name}: not a tensors-only state dict ({type(e).__name__}); ijtorch does not "
                         "unpickle arbitrary objects") from e
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelError(f"{path.name}: expected a state dict of tensors")
    return {str(k): v.contiguous() for k, v in state.items()}


def _import_native(folder: Path, dj: dict[str, Any], cfg_ij: dict[str, Any], sd_w: Any, build: Path,
                   model_name: str, target: Path) -> ImportResult:
    """An ijtorch-exported package: back to the original model folder (safetensors weights)."""
    from safetensors.torch import save_file

    import ijtorch
    from ijtorch.models.store import CONFIG_NAME, SCHEMA_VERSION, WEIGHTS_NAME

    state = _load_state_dict(_local(folder, sd_w["source"], "pytorch_state_dict weights", sd_w.get("sha256")))
    inner = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    if not inner:
        raise ModelError("the state dict does not hold ijtorch network weights (no 'net.' keys)")
    save_file(inner, str(build / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = dict(cfg_ij)
    cfg.update(schema_version=SCHEMA_VERSION, ijtorch_version=ijtorch.__version__,
               weights={"file": WEIGHTS_NAME, "sha256": ""}, name=model_name,
               imported_from={"bioimageio_name": dj.get("name"), "format_version": dj.get("format_version")})
    (build / CONFIG_NAME).write_text(json.dumps(cfg))
    task = "classify" if cfg["model_type"] == "classifier" else (
        "segment" if cfg["model_type"] in ("stardist2d", "stardist3d", "unet_watershed") else "restore")
    return ImportResult(target, model_name, cfg["model_type"], task, "pytorch_state_dict")


def _import_generic(folder: Path, dj: dict[str, Any], sd_w: Any, ts_w: Any, build: Path, model_name: str,
                    target: Path, task: str, threshold: float | None) -> ImportResult:
    """A foreign package: TorchScript (preferred) or an ijtorch-architecture state dict."""
    import ijtorch
    from ijtorch.models.store import CONFIG_NAME, SCHEMA_VERSION

    summary: dict[str, Any] = {"name": dj.get("name"), "format_version": dj.get("format_version"),
                               "inputs": [_tensor_summary(dj["inputs"][0])],
                               "outputs": [_tensor_summary(dj["outputs"][0])]}
    if ts_w:
        wfile = _local(folder, ts_w["source"], "torchscript weights", ts_w.get("sha256"))
        shutil.copy2(wfile, build / "weights_torchscript.pt")
        weights = {"file": "weights_torchscript.pt", "format": "torchscript", "sha256": ""}
        fmt = "torchscript"
    elif sd_w:
        from safetensors.torch import save_file

        state = _load_state_dict(_local(folder, sd_w["source"], "pytorch_state_dict weights", sd_w.get("sha256")))
        save_file(state, str(build / "weights.safetensors"), metadata={"format": "pt"})
        arch = dj["weights"]["pytorch_state_dict"]["architecture"]
        summary["architecture"] = {"callable": arch["callable"], "kwargs": arch.get("kwargs") or {}}
        weights = {"file": "weights.safetensors", "format": "safetensors", "sha256": ""}
        fmt = "pytorch_state_dict"
    else:
        formats = [k for k, v in dj["weights"].items() if v]
        raise ModelError(f"the package has weights {formats}; ijtorch runs TorchScript weights, or pytorch_state_dict "
                         "weights of ijtorch's own architectures (it does not execute a package's architecture code). "
                         "Add TorchScript weights, e.g. with bioimageio.core's add_weights")
    # a declared ``binarize`` already gives 0/1 outputs, which 0.5 separates as well
    spatial = "".join(a["id"].upper() for a in dj["inputs"][0]["axes"] if a["type"] == "space")
    cfg = {"schema_version": SCHEMA_VERSION, "ijtorch_version": ijtorch.__version__, "model_type": MODEL_TYPE,
           "name": model_name, "description": str(dj.get("description", ""))[:500], "task": task, "axes": spatial,
           "threshold": float(threshold if threshold is not None else 0.5),
           "weights": weights, "bioimageio": summary,
           "license": dj.get("license"), "authors": [a.get("name") for a in dj.get("authors") or []],
           "cite": [c.get("text") for c in dj.get("cite") or []]}
    (build / CONFIG_NAME).write_text(json.dumps(cfg))
    return ImportResult(target, model_name, MODEL_TYPE, task, fmt)


def _tensor_summary(t: dict[str, Any]) -> dict[str, Any]:
    axes = []
    for a in t["axes"]:
        entry = {"id": a["id"], "type": a["type"]}
        for key in ("channel_names", "size", "scale", "unit", "halo"):
            if a.get(key) is not None:
                entry[key] = a[key]
        axes.append(entry)
    return {"id": t["id"], "axes": axes, "preprocessing": t.get("preprocessing") or [],
            "postprocessing": t.get("postprocessing") or []}
