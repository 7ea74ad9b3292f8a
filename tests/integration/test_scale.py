"""Scale out on Dask (issue 21), on a real ``distributed.LocalCluster`` of 2 worker processes.

- a folder through ``ijtorch segment --dask`` (a subprocess, as a user runs it): the same files, byte
  for byte, as the single-process run, the same failure line, summary and exit code; a rerun skips
  the finished inputs (manifest); restore, denoise --model, evaluate and normalize on an existing
  scheduler write what their single-process runs write;
- a worker killed (SIGKILL) in the middle of writing an input's outputs: its task runs again on
  another worker, nothing is lost, duplicated or half-written;
- a big image segmented block by block equals the whole-image segmentation (and objects on the
  block seams are kept once).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[2] / "python" / "ijtorch" / "samples" / "nuclei" / "images"
SMALL = ["1a75e9f15481d110.tif", "35ca5f142a7d7a3e.tif", "449fe932622db3b4.tif", "d0f2a00d3155c243.tif"]

pytestmark = pytest.mark.slow


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_outputs(got: dict[str, bytes], want: dict[str, bytes]) -> None:
    """Every file byte for byte, except that numbers in CSV tables may differ by float32 rounding: a
    worker runs torch with 1 thread, the single-process run with all cores, and a per-object
    probability summed in another order can differ in its last bit (the labels do not)."""
    assert sorted(got) == sorted(want)
    for name, data in want.items():
        if data == got[name] or not name.endswith(".csv"):
            assert data == got[name], name
            continue
        rows_want = [r.split(",") for r in data.decode().splitlines()]
        rows_got = [r.split(",") for r in got[name].decode().splitlines()]
        assert len(rows_got) == len(rows_want) and rows_got[0] == rows_want[0], name
        for a_row, b_row in zip(rows_got[1:], rows_want[1:]):
            for a, b in zip(a_row, b_row, strict=True):
                assert a == b or np.isclose(float(a), float(b), rtol=1e-5, atol=1e-6), (name, a, b)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, src / name)
    (src / "broken.tif").write_bytes(b"not a tiff at all")
    return src


def _cli(*args) -> subprocess.CompletedProcess:
    """``python -m ijtorch.cli ARGS`` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _summary(out: subprocess.CompletedProcess, verb: str) -> str:
    return [line for line in out.stdout.splitlines() if line.startswith(f"ijtorch {verb}: ")][-1]


def _untimed(line: str) -> str:
    """A result line without its seconds and output path (they differ between runs)."""
    return re.sub(r" in [0-9.]+ s -> .*$", "", line)


def _without_manifest(folder: Path) -> dict[str, bytes]:
    files = _files(folder)
    files.pop(".ijtorch-manifest.jsonl", None)
    return files


def test_segment_dask_folder_equals_single_process_and_a_rerun_skips_finished_work(folder, tmp_path):
    single, dask = tmp_path / "single", tmp_path / "dask"
    one = _cli("segment", folder, "--output", single)
    two = _cli("segment", folder, "--output", dask, "--dask", "--dask-workers", 2, "--dask-threads", 1)
    assert one.returncode == two.returncode == 1, two.stderr
    assert _summary(one, "segment") == _summary(two, "segment") == "ijtorch segment: 4 done, 1 failed, 0 skipped"
    assert "broken.tif: not a TIFF file" in two.stderr
    assert "dask: 2 worker(s)" in two.stderr and "Traceback" not in two.stderr
    # the lines, in input order, with the object counts that came back from the workers
    strip = [_untimed(line) for line in one.stdout.splitlines()]
    assert [_untimed(line) for line in two.stdout.splitlines()] == strip
    outputs = _files(dask)
    manifest = outputs.pop(".ijtorch-manifest.jsonl")
    assert_same_outputs(outputs, _files(single))  # labels, ROIs, overlays byte for byte; CSVs to float32 rounding
    assert not [p for p in dask.iterdir() if p.name.startswith(".ijtorch-partial-")]
    assert len(manifest.decode().splitlines()) == 4

    # a rerun: the finished inputs are skipped (and it says so); the broken one is tried again
    again = _cli("segment", folder, "--output", dask, "--dask", "--dask-workers", 2)
    assert again.returncode == 1 and _summary(again, "segment") == "ijtorch segment: 0 done, 1 failed, 4 skipped"
    assert "4 input(s) already finished by an earlier run" in again.stderr

    # an output deleted (or an input changed) is redone, the rest skipped
    (dask / (Path(SMALL[0]).stem + "_RoiSet.zip")).unlink()
    (folder / "broken.tif").unlink()
    third = _cli("segment", folder, "--output", dask, "--dask", "--dask-workers", 2)
    assert third.returncode == 0 and _summary(third, "segment") == "ijtorch segment: 1 done, 0 failed, 3 skipped"
    assert_same_outputs(_without_manifest(dask), _files(single))

    # other parameters are other work; where and how loudly it runs change nothing
    from ijtorch.cli import build_parser
    from ijtorch.scale.manifest import Manifest, params_key

    def finished(*extra) -> bool:
        args = vars(build_parser().parse_args(["segment", str(folder), "--output", str(dask), *extra]))
        return Manifest(dask, "segment", params_key("segment", args)).finished([folder / SMALL[0]])

    assert finished("--dask", "--dask-workers", "2") and finished() and finished("--dask-threads", "2", "-v")
    assert not finished("--dask", "--prob-threshold", "0.6") and not finished("--model", str(tmp_path / "other"))


def test_batch_verbs_on_a_dask_scheduler_write_what_the_single_process_run_writes(folder, tmp_path):
    """restore, denoise --model, evaluate and normalize on an existing scheduler (``--dask tcp://...``)."""
    from distributed import LocalCluster

    model = tmp_path / "n2v"
    trained = _cli("denoise", folder, "--output", tmp_path / "denoised", "--epochs", 1, "--steps", 2,
                   "--save-model", model, "--device", "cpu")
    assert trained.returncode == 1, trained.stderr  # broken.tif is reported, the others trained on
    labels = SAMPLES.parent / "labels"
    pred = tmp_path / "pred"
    pred.mkdir()
    for name in SMALL:
        shutil.copy(labels / name, pred / name)
    (pred / "no-ground-truth.tif").write_bytes((labels / SMALL[0]).read_bytes())
    runs = {"restore": ("restore", folder, "--model", model, "--device", "cpu"),
            "denoise": ("denoise", folder, "--model", model, "--device", "cpu"),
            "evaluate": ("evaluate", pred, labels),
            "normalize": ("normalize", folder, "--low", 2, "--high", 98)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        for verb, args in runs.items():
            single = _cli(*args, "--output", tmp_path / f"{verb}-single")
            dask = _cli(*args, "--output", tmp_path / f"{verb}-dask", "--dask", cluster.scheduler_address,
                        "--dask-workers", 2, "--dask-threads", 1)
            assert dask.returncode == single.returncode, dask.stderr
            assert _summary(dask, verb) == _summary(single, verb), dask.stdout
            assert "Traceback" not in dask.stderr
            assert_same_outputs(_without_manifest(tmp_path / f"{verb}-dask"), _files(tmp_path / f"{verb}-single"))


def test_a_worker_killed_mid_write_loses_nothing(folder, tmp_path, capsys):
    from ijtorch.cli.batch import Batch

    (folder / "broken.tif").unlink()
    files = sorted(folder.glob("*.tif"))
    victim = files[1].name
    marker = tmp_path / "killed-once"
    single, dask = tmp_path / "single", tmp_path / "dask"

    def make_step(kill: bool):
        def step(path: Path, staging: Path) -> str:
            import signal

            from ijtorch.io.tiff import read_tiff
            from ijtorch.tasks.segment import segment
            from ijtorch.tasks.segmentation_files import write_segmentation_outputs

            image = read_tiff(path)
            result = segment(image.data, image.axes, model="nuclei")
            paths = write_segmentation_outputs(staging, path.stem, image, result.labels, result.axes)
            if kill and path.name == victim and not marker.exists():
                marker.write_text(str(os.getpid()))
                Path(paths["labels"]).write_bytes(b"half a file")  # caught in the middle of its writes
                os.kill(os.getpid(), signal.SIGKILL)
            return f"{path.name}: {result.n_objects} objects"
        return step

    options = argparse.Namespace(dask="local", dask_workers=2, dask_threads=1, model="nuclei", inputs=[str(folder)],
                                 output=str(dask))
    batch = Batch("segment", len(files))
    batch.run(files, make_step(False), output=single, inputs=lambda p: [p])
    assert batch.finish() == 0
    batch = Batch("segment", len(files), options=options)
    batch.run(files, make_step(True), output=dask, inputs=lambda p: [p])
    assert batch.finish() == 0
    assert marker.exists(), "the worker was not killed"
    assert sorted(batch.done) == sorted(str(p) for p in files)
    outputs = _files(dask)
    manifest = outputs.pop(".ijtorch-manifest.jsonl").decode().splitlines()
    assert_same_outputs(outputs, _files(single))  # every output once, none half-written
    assert len(manifest) == len(files)
    assert not [p for p in dask.iterdir() if p.name.startswith(".ijtorch-partial-")]


def test_blockwise_big_image_equals_whole_image_labels(tmp_path):
    """A 512 x 768 mosaic in 256-px blocks (6 blocks, 3 seams crossing ~80 nuclei), lazily read from
    a tiled TIFF and from an OME-Zarr: the same objects as the whole-image run, none split at a seam."""
    import tifffile
    import zarr
    from distributed import Client, LocalCluster

    from ijtorch.metrics.instance import evaluate_pair
    from ijtorch.scale.blockwise import segment_blockwise
    from ijtorch.scale.synthetic import write_mosaic_tiff
    from ijtorch.tasks.segment import segment

    big = tmp_path / "mosaic.tif"
    write_mosaic_tiff(big, (512, 768), seed=3)
    image = tifffile.imread(big)
    whole = segment(image, "YX", model="nuclei").labels.astype(np.int64)
    ome = tmp_path / "mosaic.ome.zarr"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_image

        write_image(image[None], zarr.open_group(str(ome), mode="w"), axes="cyx", scale_factors=())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        from_tiff = segment_blockwise(big, tmp_path / "out", block=256, client=client)
        from_zarr = segment_blockwise(ome, tmp_path / "out_zarr", block=256, channel=0, client=client)
    assert from_tiff.n_blocks == 6 and from_tiff.near_seams > 30
    labels = np.asarray(zarr.open_group(str(from_tiff.labels), mode="r")["0"][:]).astype(np.int64)
    again = np.asarray(zarr.open_group(str(from_zarr.labels), mode="r")["0"][:]).astype(np.int64)
    np.testing.assert_array_equal(labels, again)
    assert from_tiff.n_objects == whole.max() == labels.max() == len(np.unique(labels)) - 1
    m = evaluate_pair(whole, labels, thresholds=(0.9,))
    assert m["fp"] == m["fn"] == m["splits"] == m["merges"] == 0, m
    assert (labels == whole).mean() > 0.995
    assert from_tiff.files["measurements"].is_file() and from_tiff.files["rois"].is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".ijtorch-partial-")]
    rows = (tmp_path / "out" / "mosaic_measurements.csv").read_text().splitlines()
    assert len(rows) == from_tiff.n_objects + 1


def test_the_readme_slurm_configuration_builds_a_job_script(tmp_path):
    """The documented dask-jobqueue configuration gives the sbatch script it promises (no SLURM here:
    the cluster is built, not scaled)."""
    pytest.importorskip("dask_jobqueue")
    from ijtorch.scale.cluster import DaskOptions, slurm_cluster

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    config = tmp_path / "slurm-cluster.yaml"
    config.write_text(readme.split("<!-- slurm-example")[1].split("```yaml\n")[1].split("```")[0])
    cluster = slurm_cluster(DaskOptions(str(config), 8), config, scale=False)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p cpu", "#SBATCH -A my-lab", "#SBATCH --cpus-per-task=8", "#SBATCH -t 04:00:00",
                 "source /shared/envs/ijtorch/bin/activate", "export IJTORCH_MODELS=/shared/ijtorch-models"):
        assert line in script, script
    assert "python3 -m distributed.cli.dask_worker" in script and "--nthreads 1" in script and "--nworkers 8" in script
