"""Model names, the model registry and a cache of loaded models.

Registry: bundled models live in ``ijtorch/models/bundled/<name>/``; user models in
``$IJTORCH_MODELS`` or ``~/.local/share/ijtorch/models/<name>/`` (read when a function is called,
never at import). :func:`resolve_model` accepts a registered name or a path; :func:`load_model`
builds the model object its folder's ``model_type`` names (folders: :mod:`ijtorch.models.folder`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable

from ijtorch.errors import ModelError

from .folder import (CONFIG_NAME, SAVED_HOOKS, SCHEMA_VERSION, WEIGHTS_NAME, ModelDir, load_model_dir,
                     publish_model_folder, read_config, save_model_dir, sha256_file)

__all__ = [
    "SCHEMA_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "ModelDir", "save_model_dir", "load_model_dir",
    "sha256_file", "bundled_dir", "user_models_dir", "list_models", "resolve_model", "load_model",
    "clear_model_cache", "register_model_type", "publish_model_folder", "read_config",
]

log = logging.getLogger(__name__)

def bundled_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(__file__).resolve().parent / "bundled"


def user_models_dir() -> Path:
    """``$IJTORCH_MODELS`` or ``~/.local/share/ijtorch/models`` (read at call time)."""
    env = os.environ.get("IJTORCH_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".local" / "share" / "ijtorch" / "models"


def new_user_model_dir(name: str) -> Path:
    """Folder for a new user model called ``name`` (the user model folder is created if needed).

    ``name`` must be a plain name: no path separators and no leading dot, so it cannot escape
    :func:`user_models_dir`.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ModelError(f"name={name!r}: give a plain model name (letters, digits, - and _)")
    if name == "auto":  # model=auto chooses among the registered models (ijtorch.models.auto)
        raise ModelError("name='auto' is reserved (model=auto chooses a model per image); give another name")
    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def list_models() -> list[dict[str, Any]]:
    """Registered models: ``name``, ``path``, ``source`` (``bundled``/``user``), ``model_type``,
    ``description`` and ``auto`` (the config's ``model=auto`` entry, e.g. ``{"family": "nuclei"}``, or None).

    User models shadow bundled ones of the same name.
    """
    found: dict[str, dict[str, Any]] = {}
    for source, root in (("bundled", bundled_dir()), ("user", user_models_dir())):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            if (d / CONFIG_NAME).is_file():
                try:
                    cfg = json.loads((d / CONFIG_NAME).read_text())
                except (OSError, json.JSONDecodeError):
                    log.warning("ignoring unreadable model config %s", d / CONFIG_NAME)
                    continue
                found[d.name] = {"name": d.name, "path": str(d), "source": source,
                                 "model_type": cfg.get("model_type"), "description": cfg.get("description", ""),
                                 "auto": cfg.get("auto")}
    return sorted(found.values(), key=lambda m: m["name"])


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Path of a model given by registered name or by directory path."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    p = Path(name_or_path).expanduser()
    if (p / CONFIG_NAME).is_file():
        return p
    for m in list_models():
        if m["name"] == str(name_or_path):
            return Path(m["path"])
    names = [m["name"] for m in list_models()]
    raise ModelError(f"model={str(name_or_path)!r} is neither a model directory nor a registered model; "
                     f"registered: {names} (user models go in {user_models_dir()})")


_BUILDERS: dict[str, Callable[[ModelDir, str], Any]] = {}
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


def register_model_type(model_type: str, builder: Callable[[ModelDir, str], Any]) -> None:
    """Register ``builder(model_dir, device) -> model object`` for a ``model_type``."""
    _BUILDERS[model_type] = builder


def _lazy_builder(module: str, attribute: str) -> Callable[[ModelDir, str], Any]:
    """A builder that imports its model module when a model of that type first loads: importing
    every model module up front (scipy, scikit-image, the networks) cost a cold start about a
    second for a model that needs none of them."""

    def build(md: ModelDir, device: str) -> Any:
        target: Any = importlib.import_module(module, __package__)
        for part in attribute.split("."):
            target = getattr(target, part)
        return target(md, device=device)

    return build


def _builtin_builders() -> None:
    from .restoration import MODEL_TYPES  # a light module (numpy only at import)

    builtin = {"stardist2d": (".stardist.model", "StarDistModel.from_model_dir"),
               "stardist3d": (".stardist.model3d", "StarDist3DModel.from_model_dir"),
               "unet_watershed": (".unet_watershed", "from_model_dir"),
               "classifier": (".classifier", "ClassifierModel.from_model_dir"),
               "pixel_classifier": (".pixel_classifier", "PixelClassifierModel.from_model_dir")}
    builtin.update({mtype: (".restoration", "RestorationModel.from_model_dir") for mtype in MODEL_TYPES})
    for mtype, (module, attribute) in builtin.items():
        if mtype not in _BUILDERS:
            register_model_type(mtype, _lazy_builder(module, attribute))
    if "bioimageio" not in _BUILDERS:
        # an imported bioimage.io package runs on ijtorch.bioimageio.runtime, which sits above the
        # models (it returns the tasks' result types): named here, resolved when such a model loads
        def build_bioimageio(md: ModelDir, device: str) -> Any:
            return importlib.import_module("ijtorch.bioimageio.runtime").build(md, device)

        register_model_type("bioimageio", build_bioimageio)


def load_model(name_or_path: str | os.PathLike, *, device: str = "auto") -> Any:
    """Build (once) and return the model object for a registered name or path.

    Loaded models are cached by (resolved path, weights SHA-256, device), so a macro that calls a
    task 1000 times loads the weights once. :func:`save_model_dir` clears the cache.
    """
    from .device import resolve_device

    path = resolve_model(name_or_path).resolve()
    cfg = read_config(path)
    dev = resolve_device(device)
    key = (str(path), str(cfg.get("weights", {}).get("sha256")), dev)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        _builtin_builders()
        mtype = cfg.get("model_type")
        if mtype not in _BUILDERS:
            raise ModelError(f"{path}: model_type={mtype!r} is unknown; known: {sorted(_BUILDERS)}")
        model = _BUILDERS[mtype](load_model_dir(path), dev)
        _CACHE[key] = model
        log.info("loaded model %s (%s) on %s", path.name, mtype, dev)
        return model


def clear_model_cache() -> None:
    """Forget every cached model."""
    with _LOCK:
        _CACHE.clear()


SAVED_HOOKS.append(clear_model_cache)
