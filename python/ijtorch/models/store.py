"""Model directories, the model registry and a cache of loaded models.

A model directory holds ``weights.safetensors`` and ``config.json``. The config records
``schema_version``, the ijtorch version, ``model_type``, the architecture arguments, the axes
contract, the normalisation, tuned thresholds, a training-data summary (including the train and
validation item names), metrics and the SHA-256 of the weights. Loading never unpickles: weights
are read with safetensors, and a loader refuses unknown schema versions and weights whose SHA-256
differs from the config.

Registry: bundled models live in ``ijtorch/models/bundled/<name>/``; user models in
``$IJTORCH_MODELS`` or ``~/.local/share/ijtorch/models/<name>/`` (read when a function is called,
never at import). :func:`resolve_model` accepts a registered name or a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ijtorch.errors import ModelError

__all__ = [
    "SCHEMA_VERSION", "WEIGHTS_NAME", "CONFIG_NAME", "ModelDir", "save_model_dir", "load_model_dir",
    "sha256_file", "bundled_dir", "user_models_dir", "list_models", "resolve_model", "load_model",
    "clear_model_cache", "register_model_type", "publish_model_folder",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
_SUPPORTED_SCHEMAS = (1,)


@dataclass(frozen=True)
class ModelDir:
    """A loaded model directory: its path, config and weight tensors (CPU)."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, Any]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_model_folder(built: Path, target: Path) -> None:
    """Make the fully written model folder ``built`` the model folder ``target``, replacing any
    previous one; readers see either the old or the new model, never a half-written one (a rename
    when both are on one file system)."""
    os.chmod(built, 0o755)  # mkdtemp makes 0700 folders; models are shared read-only data
    for f in built.iterdir():
        os.chmod(f, 0o644)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        os.replace(target, old)
    shutil.move(str(built), str(target))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_model_dir(path: str | os.PathLike, state_dict: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` and ``config.json`` to ``path`` atomically.

    The directory is assembled next to ``path`` and moved into place, replacing an existing one.
    ``schema_version``, ``ijtorch_version`` and ``weights`` (file name and SHA-256) are filled in.

    Parameters
    ----------
    path : path
        Target directory.
    state_dict : dict of str to torch.Tensor
        Model weights.
    config : dict
        JSON-serialisable configuration; must contain ``model_type``.
    """
    from safetensors.torch import save_file

    import ijtorch

    if "model_type" not in config:
        raise ValueError("config must contain 'model_type'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        cfg = dict(config)
        cfg["schema_version"] = SCHEMA_VERSION
        cfg["ijtorch_version"] = ijtorch.__version__
        cfg["weights"] = {"file": WEIGHTS_NAME, "sha256": sha256_file(tmp / WEIGHTS_NAME),
                          "bytes": (tmp / WEIGHTS_NAME).stat().st_size}
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        for extra in ("README.md",):
            if (path / extra).exists() and not (tmp / extra).exists():
                shutil.copy2(path / extra, tmp / extra)
        publish_model_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clear_model_cache()
    log.info("saved model to %s", path)
    return path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory (schema version only)."""
    path = Path(path)
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelError(f"{path} is not a model directory: {CONFIG_NAME} is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_path} is not valid JSON: {e}") from e
    version = cfg.get("schema_version")
    if version not in _SUPPORTED_SCHEMAS:
        raise ModelError(
            f"{cfg_path}: schema_version={version!r} is not supported by this ijtorch (supported: "
            f"{list(_SUPPORTED_SCHEMAS)}); update ijtorch or re-export the model with this version")
    return cfg


def load_model_dir(path: str | os.PathLike, *, check_sha256: bool = True) -> ModelDir:
    """Load a model directory written by :func:`save_model_dir` (never unpickles).

    Raises
    ------
    ModelError
        Missing files, unknown ``schema_version`` or a weights file whose SHA-256 differs from the
        config.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    wfile = path / cfg.get("weights", {}).get("file", WEIGHTS_NAME)
    if not wfile.is_file():
        raise ModelError(f"{path}: weights file {wfile.name} is missing")
    if check_sha256:
        expected = cfg.get("weights", {}).get("sha256")
        actual = sha256_file(wfile)
        if expected != actual:
            raise ModelError(f"{wfile}: SHA-256 {actual} differs from {expected} in {CONFIG_NAME}; the weights "
                             "are corrupt or were modified — restore or re-save the model")
    if cfg.get("weights", {}).get("format") == "torchscript":  # imported bioimage.io package (ijtorch.bioimageio)
        return ModelDir(path, cfg, {})
    return ModelDir(path, cfg, load_file(str(wfile)))


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
    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def list_models() -> list[dict[str, Any]]:
    """Registered models: ``name``, ``path``, ``source`` (``bundled``/``user``), ``model_type``.

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
                                 "model_type": cfg.get("model_type"), "description": cfg.get("description", "")}
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


def _builtin_builders() -> None:
    if "stardist2d" not in _BUILDERS:
        from .stardist.model import StarDistModel

        register_model_type("stardist2d", lambda md, dev: StarDistModel.from_model_dir(md, device=dev))
    if "stardist3d" not in _BUILDERS:
        from .stardist.model3d import StarDist3DModel

        register_model_type("stardist3d", lambda md, dev: StarDist3DModel.from_model_dir(md, device=dev))
    if "unet_watershed" not in _BUILDERS:
        from .unet_watershed import from_model_dir

        register_model_type("unet_watershed", lambda md, dev: from_model_dir(md, device=dev))
    if "classifier" not in _BUILDERS:
        from . import classifier  # noqa: F401  (registers "classifier" on import)
    if "pixel_classifier" not in _BUILDERS:
        from . import pixel_classifier  # noqa: F401  (registers "pixel_classifier" on import)
    if "care" not in _BUILDERS:
        from .restoration import register_restoration_models

        register_restoration_models()
    if "bioimageio" not in _BUILDERS:
        from ijtorch.bioimageio.runtime import build as build_bioimageio

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
