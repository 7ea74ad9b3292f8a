"""The ``dask.distributed`` client behind ``--dask [SCHEDULER]``.

``SCHEDULER`` is one of

- ``local`` (the default of a bare ``--dask``): a ``LocalCluster`` of ``--dask-workers`` worker
  *processes* (default: the number of CPU cores), one task at a time each;
- ``tcp://host:8786`` (any ``scheme://`` address): an existing scheduler (``dask scheduler`` or a
  cluster started elsewhere);
- a path to a scheduler file (``dask scheduler --scheduler-file FILE``, as on HPC systems);
- ``slurm``: a ``dask_jobqueue.SLURMCluster`` built from dask's ``jobqueue.slurm`` configuration
  (``~/.config/dask/jobqueue.yaml`` or ``DASK_JOBQUEUE__SLURM__*`` variables), scaled to
  ``--dask-workers`` jobs;
- a ``.yaml`` file: dask configuration to load first (e.g. the ``jobqueue.slurm`` section), then
  the SLURM cluster it describes.

Every worker runs torch with ``--dask-threads`` threads (default 1: one process per core scales
better than threads inside one process) through a worker plugin, and loads a model once (the model
cache of :func:`ijtorch.models.store.load_model` lives as long as the worker process).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["DaskOptions", "open_client", "slurm_cluster", "describe_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaskOptions:
    """What ``--dask [SCHEDULER] --dask-workers N --dask-threads T`` asked for."""

    scheduler: str = "local"
    workers: int | None = None
    threads: int = 1


def _missing_dask() -> ImportError:
    return ImportError("--dask needs dask and distributed: pip install 'ijtorch[dask]'")


def _local_cluster(opts: DaskOptions) -> Any:
    from distributed import LocalCluster

    workers = opts.workers or os.cpu_count() or 1
    env = {"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads),
           "OPENBLAS_NUM_THREADS": str(opts.threads)}
    import dask

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {**dask.config.get(
            "distributed.nanny.pre-spawn-environ", default={}), **env}}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                            silence_logs=logging.ERROR)


def slurm_cluster(opts: DaskOptions, config_file: str | os.PathLike | None = None, *, scale: bool = True) -> Any:
    """A ``dask_jobqueue.SLURMCluster`` from dask's ``jobqueue.slurm`` config, with the
    ``jobqueue: slurm:`` settings of ``config_file`` (a dask config YAML such as the README's example)
    on top; ``--dask-workers`` jobs."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ImportError("--dask slurm needs dask-jobqueue: pip install 'ijtorch[dask]'") from None
    settings: dict[str, Any] = {}
    if config_file is not None:
        import yaml

        with open(config_file, encoding="utf-8") as f:
            tree = yaml.safe_load(f) or {}
        slurm = (tree.get("jobqueue") or {}).get("slurm")
        if not isinstance(slurm, dict):
            raise ValueError(f"--dask {config_file}: expected a 'jobqueue: slurm:' section (see the README)")
        settings = {key.replace("-", "_"): value for key, value in slurm.items()}
    cluster = SLURMCluster(silence_logs=logging.ERROR, **settings)
    if scale:
        cluster.scale(jobs=opts.workers or 1)
    return cluster


def _connect(opts: DaskOptions) -> tuple[Any, Any]:
    """(client, cluster we started or None)."""
    try:
        from distributed import Client
    except ImportError:
        raise _missing_dask() from None
    spec = (opts.scheduler or "local").strip()
    if spec == "local":
        cluster = _local_cluster(opts)
        return Client(cluster), cluster
    if "://" in spec:
        return Client(spec), None
    if spec == "slurm":
        cluster = slurm_cluster(opts)
        return Client(cluster), cluster
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"--dask {spec}: no such dask configuration file")
        cluster = slurm_cluster(opts, path)
        return Client(cluster), cluster
    if path.is_file():
        return Client(scheduler_file=str(path)), None
    raise ValueError(f"--dask {spec!r}: expected 'local', a scheduler address (tcp://host:8786), a scheduler file, "
                     "'slurm' or a dask jobqueue .yaml file")


@contextlib.contextmanager
def open_client(opts: DaskOptions) -> Iterator[Any]:
    """A connected ``distributed.Client`` with the torch-threads plugin; closed (and a cluster we
    started shut down) on exit."""
    quiet = [logging.getLogger(n) for n in ("distributed", "distributed.scheduler", "distributed.nanny",
                                            "distributed.core", "distributed.http.proxy", "distributed.worker")]
    levels = [q.level for q in quiet]
    if not log.isEnabledFor(logging.DEBUG):
        for q in quiet:
            q.setLevel(logging.WARNING)
    client, cluster = _connect(opts)
    try:
        from ._plugin import TorchThreads

        client.register_plugin(TorchThreads(opts.threads))
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def describe_client(client: Any) -> str:
    """``dask: 2 workers at tcp://…, dashboard http://…`` for the CLI."""
    try:
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    except TypeError:
        n = len(client.scheduler_info().get("workers", {}))
    link = getattr(client, "dashboard_link", None)
    return f"dask: {n} worker(s) at {client.scheduler.address}" + (f", dashboard {link}" if link else "")
