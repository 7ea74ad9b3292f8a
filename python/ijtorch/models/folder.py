"""A model folder on disk: ``weights.safetensors`` and ``config.json``, read and written safely.

The config records ``schema_version``, the ijtorch version, ``model_type``, the architecture
arguments, the axes contract, the normalisation, tuned thresholds, a training-data summary,
metrics and the SHA-256 of the weights. Loading never unpickles: weights are read with
safetensors, and a loader refuses unknown schema versions and weights whose SHA-256 differs from
the config. The model classes build on this module; :mod:`ijtorch.models.store` (names, the
registry, loading by model type) builds on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ijtorch.errors import ModelError

__all__ = [
    "CONFIG_NAME",
    "SCHEMA_VERSION",
    "WEIGHTS_NAME",
    "ModelDir",
    "config_text",
    "load_model_dir",
    "publish_model_folder",
    "read_config",
    "save_model_dir",
    "sha256_file",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.json"
_SUPPORTED_SCHEMAS = (1,)

_NUMBER_LIST = re.compile(r"\[\s*(-?[0-9][-0-9.eE+]*(?:,\s*-?[0-9][-0-9.eE+]*)*)\s*\]")


def config_text(config: dict) -> str:
    """A config as indented JSON with every list of numbers on one line (a shift reference holds
    thousands of numbers: one per line made config.json 5 000 lines long)."""
    text = json.dumps(config, indent=2, sort_keys=True)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"


#: Called after a model folder was (re)written.
SAVED_HOOKS: list = []


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
        (tmp / CONFIG_NAME).write_text(config_text(cfg))
        for extra in ("README.md",):
            if (path / extra).exists() and not (tmp / extra).exists():
                shutil.copy2(path / extra, tmp / extra)
        publish_model_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for hook in SAVED_HOOKS:  # the store drops cached models built from the old folder
        hook()
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
