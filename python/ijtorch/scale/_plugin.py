"""The worker plugin (a module of its own: it needs ``distributed`` at import, the rest of the package does not)."""

from __future__ import annotations

import os
from typing import Any

from distributed import WorkerPlugin

__all__ = ["TorchThreads"]


class TorchThreads(WorkerPlugin):
    """Every worker runs torch (and its intra-op pool) with ``threads`` threads."""

    name = "ijtorch-torch-threads"

    def __init__(self, threads: int = 1) -> None:
        self.threads = int(threads)

    def setup(self, worker: Any = None) -> None:
        import torch

        torch.set_num_threads(self.threads)
        os.environ["IJTORCH_DASK_WORKER"] = "1"
