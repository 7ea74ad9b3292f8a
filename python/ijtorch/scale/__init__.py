"""Scale out on Dask: many files on a cluster, images larger than memory, nothing lost.

- :mod:`ijtorch.scale.cluster`: a ``dask.distributed`` client for ``--dask [SCHEDULER]``: a
  ``LocalCluster`` of worker processes (one torch thread each unless told), a scheduler address, a
  scheduler file, or a ``dask-jobqueue`` ``SLURMCluster`` built from dask's jobqueue config.
- :mod:`ijtorch.scale.runner`: runs a CLI batch's steps one task per file on that cluster, with the
  batch's own staging (atomic outputs), per-file failures and progress from the cluster.
- :mod:`ijtorch.scale.manifest`: which inputs were finished with which parameters and outputs
  (SHA-256), so that a rerun of the same command skips them.
- :mod:`ijtorch.scale.blockwise`: star-convex segmentation of one image larger than memory, block
  by block (lazy TIFF or OME-Zarr in, OME-Zarr out), objects on block seams kept once.

The package sits just under ``cli`` (see docs/architecture.md); dask is imported lazily, so the rest
of ijtorch works without the ``dask`` extra.
"""

__all__ = ["cluster", "runner", "manifest", "blockwise"]
