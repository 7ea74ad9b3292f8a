"""A generic, resumable PyTorch training loop.

:class:`Trainer` runs AdamW with a cosine or reduce-on-plateau learning-rate schedule, validates
after every epoch, stops early on a monitored metric and writes a checkpoint after **every** epoch.
A checkpoint is one ``.safetensors`` file (model, optimizer and RNG tensors) whose metadata holds a
JSON document with everything else (epoch, scheduler, history, numpy/python RNG states); it is
written to a temporary file and moved into place with :func:`os.replace`, so a killed process leaves
either the previous or the new checkpoint, never a torn one. Nothing is pickled.

Data are supplied as a callable ``train_data(rng) -> iterable of batches`` that is called once per
epoch with a ``numpy.random.Generator`` seeded from ``(seed, epoch)``; an epoch's batches are thus
the same whether training ran straight through or was resumed. A plain iterable (e.g. a torch
``DataLoader``) is accepted too but then resumed runs only match if it is itself deterministic.

Examples
--------
>>> import numpy as np, torch
>>> from ijtorch.train.trainer import Trainer
>>> net = torch.nn.Linear(2, 1)
>>> def batches(rng):
...     x = torch.as_tensor(rng.normal(size=(8, 2)), dtype=torch.float32)
...     yield x, x.sum(1, keepdim=True)
>>> def loss_fn(model, batch):
...     x, y = batch
...     return torch.nn.functional.mse_loss(model(x), y)
>>> result = Trainer(net, loss_fn, batches, epochs=2, seed=0).fit()
>>> result.epochs_run
2
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..core.progress import ProgressCallback, ProgressEvent, TextProgressBar, emit

__all__ = ["Trainer", "TrainResult", "seed_everything", "CHECKPOINT_NAME", "BEST_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.safetensors"
BEST_NAME = "best.safetensors"
_CKPT_FORMAT = "ijtorch-checkpoint-1"
_SCHEDULERS = ("cosine", "plateau", "none")
_MODES = ("min", "max")

Batch = Any
LossFn = Callable[[torch.nn.Module, Batch], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]
MetricFn = Callable[[torch.nn.Module], dict[str, float]]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainResult:
    """Summary of a :meth:`Trainer.fit` call."""

    epochs_run: int
    best_epoch: int
    best_metric: float
    monitor: str
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    cancelled: bool = False
    seconds: float = 0.0
    checkpoint_dir: str | None = None


def _to_device(batch: Any, device: str) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(batch).to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _split_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in state["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": meta["param_groups"]}


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class Trainer:
    """Train ``model`` by minimising ``loss_fn`` over ``train_data``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; trained in place.
    loss_fn : callable
        ``loss_fn(model, batch) -> loss`` or ``-> (loss, {name: float})``; ``batch`` has been moved
        to the device (tensors, numpy arrays and nested tuples/lists/dicts of them are moved).
    train_data : callable or iterable
        ``train_data(rng)`` returning an iterable of batches for one epoch (``rng`` is a
        ``numpy.random.Generator`` seeded from ``(seed, epoch)``), or an iterable re-iterated each
        epoch.
    val_data : callable or iterable, optional
        Batches for the validation loss (``val_loss``), evaluated with ``loss_fn`` under
        ``torch.no_grad``.
    metric_fn : callable, optional
        ``metric_fn(model) -> {name: float}`` run after each epoch in eval mode (e.g. AP@0.5).
    monitor : str
        Metric that drives early stopping, plateau scheduling and the best checkpoint
        (``"val_loss"``, ``"train_loss"`` or any key returned by ``metric_fn``).
    mode : {"min", "max"}
        Whether ``monitor`` should decrease or increase.
    epochs : int
        Maximum number of epochs.
    lr, weight_decay : float
        AdamW parameters.
    scheduler : {"cosine", "plateau", "none"}
        Learning-rate schedule, stepped once per epoch (cosine anneals to ``lr * 0.01``).
    patience : int or None
        Stop after this many epochs without improvement of ``monitor`` (``None``: never).
    checkpoint_dir : str or Path, optional
        Where ``last.safetensors`` (every epoch) and ``best.safetensors`` go.
    resume : bool
        Continue from ``checkpoint_dir/last.safetensors`` if it exists.
    seed : int
        Seeds all generators; runs on CPU are reproducible.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    amp : bool
        Mixed precision with ``torch.autocast``; only used on CUDA.
    grad_clip : float or None
        Clip the gradient norm to this value.
    progress : callable, optional
        Receives :class:`~ijtorch.core.progress.ProgressEvent` (phases ``train``, ``validate``,
        ``epoch``); exceptions from it are logged and ignored.
    progress_bar : bool or None
        Draw a text bar on stderr; ``None`` draws it when stderr is a terminal.
    cancel : callable, optional
        ``cancel() -> bool`` polled before every epoch; when true, training stops (the checkpoint of
        the last finished epoch is on disk) and the result has ``cancelled=True``.
    restore_best : bool
        Load the best weights into ``model`` when training ends.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        train_data: Callable[[np.random.Generator], Iterable[Batch]] | Iterable[Batch],
        *,
        val_data: Callable[[np.random.Generator], Iterable[Batch]] | Iterable[Batch] | None = None,
        metric_fn: MetricFn | None = None,
        monitor: str = "val_loss",
        mode: str = "min",
        epochs: int = 10,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: str = "cosine",
        patience: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        seed: int = 0,
        device: str = "auto",
        amp: bool = True,
        grad_clip: float | None = None,
        progress: ProgressCallback | None = None,
        progress_bar: bool | None = None,
        cancel: Callable[[], bool] | None = None,
        restore_best: bool = True,
    ) -> None:
        from ijtorch.models.device import resolve_device

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if mode not in _MODES:
            raise ValueError(f"mode={mode!r}: accepted values are {_MODES}")
        if scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r}: accepted values are {_SCHEDULERS}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs={epochs!r}: expected a positive integer")
        if not lr > 0:
            raise ValueError(f"lr={lr!r}: expected a positive float")
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience={patience!r}: expected a positive integer or None")
        if monitor == "val_loss" and val_data is None:
            monitor = "train_loss"
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        self.model = model
        self.loss_fn = loss_fn
        self.train_data = train_data
        self.val_data = val_data
        self.metric_fn = metric_fn
        self.monitor = monitor
        self.mode = mode
        self.epochs = epochs
        self.lr = float(lr)
        self.scheduler_kind = scheduler
        self.patience = patience
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = resume
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.amp = bool(amp) and self.device.startswith("cuda")
        self.grad_clip = grad_clip
        self.progress = progress
        if progress_bar is None:
            progress_bar = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._bar = TextProgressBar() if progress_bar else None
        self.cancel = cancel
        self.restore_best = restore_best

        seed_everything(self.seed)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=weight_decay)
        self.scheduler: Any = None
        if scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=self.lr * 0.01)
        elif scheduler == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode=mode, factor=0.5, patience=max(1, (patience or 10) // 3))
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []
        self.best_metric = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self._best_state: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ events
    def _emit(self, event: ProgressEvent) -> None:
        emit(self.progress, event)
        if self._bar is not None:
            emit(self._bar, event)

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value < self.best_metric if self.mode == "min" else value > self.best_metric

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_payload(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        opt_tensors, opt_meta = _split_optimizer_state(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, st in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = st
        np_state = np.random.get_state()
        py_state = random.getstate()
        meta = {
            "format": _CKPT_FORMAT,
            "epoch": self.epoch,
            "seed": self.seed,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "optimizer": _jsonable(opt_meta),
            "scheduler": _jsonable(self.scheduler.state_dict()) if self.scheduler is not None else None,
            "scaler": _jsonable(self.scaler.state_dict()) if self.scaler is not None else None,
            "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        }
        return tensors, {"ijtorch_trainer": json.dumps(meta)}

    def save_checkpoint(self) -> Path:
        """Write ``last.safetensors`` atomically; return its path."""
        if self.checkpoint_dir is None:
            raise ValueError("save_checkpoint needs checkpoint_dir")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tensors, metadata = self._checkpoint_payload()
        path = self.checkpoint_dir / CHECKPOINT_NAME
        _atomic_save(tensors, metadata, path)
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore model, optimizer, scheduler, counters and RNG states from ``path``."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ijtorch_trainer")
        if raw is None:
            raise ValueError(f"checkpoint {path} has no ijtorch trainer metadata")
        meta = json.loads(raw)
        if meta.get("format") != _CKPT_FORMAT:
            raise ValueError(f"checkpoint {path} has format {meta.get('format')!r}; expected {_CKPT_FORMAT!r}")
        tensors = load_file(str(path))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.model.to(self.device)
        self.optimizer.load_state_dict(_join_optimizer_state(
            {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"]))
        if self.scheduler is not None and meta["scheduler"] is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        ns = meta["rng_numpy"]
        np.random.set_state((ns[0], np.asarray(ns[1], dtype=np.uint32), ns[2], ns[3], ns[4]))
        ps = meta["rng_python"]
        random.setstate((ps[0], tuple(ps[1]), ps[2]))
        self.epoch = int(meta["epoch"])
        self.best_metric = float(meta["best_metric"])
        self.best_epoch = int(meta["best_epoch"])
        self.bad_epochs = int(meta["bad_epochs"])
        self.history = list(meta["history"])
        best_path = path.with_name(BEST_NAME)
        if best_path.exists():
            self._best_state = {k[6:]: v for k, v in load_file(str(best_path)).items() if k.startswith("model.")}
        log.info("resumed from %s after epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ loops
    def _batches(self, data: Any, epoch: int, salt: int) -> Iterable[Batch]:
        if callable(data):
            return data(np.random.default_rng([self.seed, epoch, salt]))
        return data

    def _loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.loss_fn(self.model, batch)
        if isinstance(out, tuple):
            return out[0], dict(out[1])
        return out, {}

    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        batches = self._batches(self.train_data, epoch, 0)
        n = len(batches) if hasattr(batches, "__len__") else 0  # type: ignore[arg-type]
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            batch = _to_device(batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", enabled=self.amp):
                loss, _ = self._loss(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {i}")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                if self.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
            total += float(loss.detach())
            count += 1
            self._emit(ProgressEvent("train", i + 1, n, f"epoch {epoch} step {i + 1}", {"loss": total / count}))
        if count == 0:
            raise ValueError("train_data produced no batches")
        return total / count

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict[str, float]:
        self.model.eval()
        metrics: dict[str, float] = {}
        if self.val_data is not None:
            total, count = 0.0, 0
            for batch in self._batches(self.val_data, 0, 1):  # same validation batches every epoch
                batch = _to_device(batch, self.device)
                with torch.autocast("cuda", enabled=self.amp):
                    loss, _ = self._loss(batch)
                total += float(loss)
                count += 1
                self._emit(ProgressEvent("validate", count, 0, f"epoch {epoch} validation batch {count}"))
            metrics["val_loss"] = total / max(count, 1)
        if self.metric_fn is not None:
            metrics.update({k: float(v) for k, v in self.metric_fn(self.model).items()})
        return metrics

    def fit(self) -> TrainResult:
        """Train until ``epochs`` are done, early stopping triggers or ``cancel()`` is true."""
        t0 = time.monotonic()
        if self.resume and self.checkpoint_dir is not None and (self.checkpoint_dir / CHECKPOINT_NAME).exists():
            self.load_checkpoint(self.checkpoint_dir / CHECKPOINT_NAME)
        stopped_early = cancelled = False
        log.info("training on %s for up to %d epochs (starting at epoch %d)", self.device, self.epochs, self.epoch + 1)
        while self.epoch < self.epochs:
            if self.cancel is not None and self.cancel():
                cancelled = True
                break
            epoch = self.epoch + 1
            te = time.monotonic()
            train_loss = self._train_epoch(epoch)
            metrics = {"epoch": float(epoch), "train_loss": train_loss, "lr": self.optimizer.param_groups[0]["lr"]}
            metrics.update(self._validate(epoch))
            metrics["seconds"] = time.monotonic() - te
            if self.monitor not in metrics:
                raise ValueError(f"monitor={self.monitor!r} is not among the metrics {sorted(metrics)}")
            value = metrics[self.monitor]
            if self.scheduler is not None:
                if self.scheduler_kind == "plateau":
                    self.scheduler.step(value)
                else:
                    self.scheduler.step()
            self.epoch = epoch
            self.history.append(metrics)
            if self._improved(value):
                self.best_metric, self.best_epoch, self.bad_epochs = value, epoch, 0
                self._best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                if self.checkpoint_dir is not None:
                    self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                    _atomic_save({f"model.{k}": v.contiguous() for k, v in self._best_state.items()},
                                 {"epoch": str(epoch), self.monitor: repr(value)}, self.checkpoint_dir / BEST_NAME)
            else:
                self.bad_epochs += 1
            if self.checkpoint_dir is not None:
                self.save_checkpoint()
            msg = f"epoch {epoch}/{self.epochs} " + " ".join(
                f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch",))
            log.info(msg)
            self._emit(ProgressEvent("epoch", epoch, self.epochs, msg, dict(metrics)))
            if self.patience is not None and self.bad_epochs >= self.patience:
                stopped_early = True
                log.info("early stopping: %s did not improve for %d epochs", self.monitor, self.patience)
                break
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return TrainResult(
            epochs_run=self.epoch, best_epoch=self.best_epoch, best_metric=float(self.best_metric),
            monitor=self.monitor, history=list(self.history), stopped_early=stopped_early, cancelled=cancelled,
            seconds=time.monotonic() - t0,
            checkpoint_dir=str(self.checkpoint_dir) if self.checkpoint_dir is not None else None,
        )
