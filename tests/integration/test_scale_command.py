"""``ijtorch Segment on Cluster`` (issue 21, item 4) without a JVM, on a real ``distributed.LocalCluster``
of 2 worker processes: a folder and a big image give the labels of the single-process run, progress
comes back from the cluster, the current image's labels and ROIs are returned, a rerun skips finished
work; through the server (``/imagej/command``, what a Fiji without Python sends) with the site's
scheduler, and refused outside the server's shared folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[2] / "python" / "ijtorch" / "samples" / "nuclei" / "images"
SMALL = ["1a75e9f15481d110.tif", "35ca5f142a7d7a3e.tif", "449fe932622db3b4.tif"]
COMMAND = "ijtorch Segment on Cluster"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "plate"
    src.mkdir()
    for name in SMALL:
        shutil.copy(SAMPLES / name, src / name)
    (src / "broken.tif").write_bytes(b"not a tiff at all")
    return src


def _run(options: str, *, image=None, source_path: str | None = None, events: list | None = None):
    from ijtorch.commands.command import get_command
    from ijtorch.commands.options import params_from_options
    from ijtorch.commands.outputs import CommandInputs

    cmd = get_command(COMMAND)
    p = params_from_options(cmd.params, options, command=COMMAND)
    return cmd.compute(CommandInputs(image=image, source_path=source_path,
                                     progress=None if events is None else events.append), p)


def test_a_folder_on_the_cluster_equals_single_process_and_opens_the_current_image(folder, tmp_path, cluster):
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    current = folder / SMALL[1]
    image = read_tiff(current)
    out, events = tmp_path / "out", []
    # empty input: the current image's folder
    result = _run(f"output=[{out}] scheduler={cluster.scheduler_address}", image=image, source_path=str(current),
                  events=events)
    assert result.values["n_done"] == 3 and result.values["n_failed"] == 1
    assert any("broken.tif: not a TIFF file" in line for line in result.log), result.log
    want = {}
    for name in SMALL:
        data = read_tiff(folder / name)
        want[name] = segment(data.data, data.axes, model="nuclei").labels
        np.testing.assert_array_equal(read_tiff(out / name).data, want[name])
        assert (out / f"{Path(name).stem}_RoiSet.zip").is_file()
        assert (out / f"{Path(name).stem}_measurements.csv").is_file()
    assert result.values["n_objects"] == sum(int(w.max()) for w in want.values())
    # progress from the cluster: files done of 4, the last one 4/4
    files = [(e.i, e.n) for e in events if e.phase == "files"]
    assert files[0] == (0, 4) and files[-1] == (4, 4) and [i for i, _ in files] == sorted(i for i, _ in files)
    # the current image's label map and ROIs open
    (labels,) = result.images
    assert labels.labels and labels.title == f"{current.stem}-labels"
    np.testing.assert_array_equal(labels.data, want[SMALL[1]])
    assert len(result.rois.outlines.labels) == int(want[SMALL[1]].max())
    assert not [p for p in out.iterdir() if p.name.startswith(".ijtorch-partial-")]

    # a rerun skips the finished inputs (manifest) and still opens the current image's results
    again = _run(f"input=[{folder}] output=[{out}] scheduler={cluster.scheduler_address}", image=image,
                 source_path=str(current))
    assert again.values["n_done"] == 0 and again.values["n_failed"] == 1
    assert any("3 input(s) already finished by an earlier run" in line for line in again.log), again.log
    np.testing.assert_array_equal(again.images[0].data, want[SMALL[1]])


def test_a_big_image_on_the_cluster_block_by_block(tmp_path, cluster):
    import tifffile
    import zarr
    from ijtorch.metrics.instance import evaluate_pair
    from ijtorch.scale.synthetic import write_mosaic_tiff
    from ijtorch.tasks.segment import segment

    big = tmp_path / "slide.tif"
    write_mosaic_tiff(big, (256, 384), seed=5)
    whole = segment(tifffile.imread(big), "YX", model="nuclei").labels.astype(np.int64)
    events: list = []
    result = _run(f"input=[{big}] block=128 scheduler={cluster.scheduler_address}", events=events)
    out = tmp_path / "slide-labels"  # the default output: beside the input
    labels = np.asarray(zarr.open_group(str(out / "slide.ome.zarr"), mode="r")["0"][:]).astype(np.int64)
    m = evaluate_pair(whole, labels, thresholds=(0.9,))
    assert m["fp"] == m["fn"] == m["splits"] == m["merges"] == 0, m
    assert result.values["n_objects"] == whole.max() == labels.max()
    assert (out / "slide_RoiSet.zip").is_file() and (out / "slide_measurements.csv").is_file()
    assert {e.phase for e in events} >= {"normalise", "detect", "render"}
    assert [(e.i, e.n) for e in events if e.phase == "detect"][-1] == (6, 6)
    assert not result.images  # no current image: nothing to open


def test_user_errors_are_one_line(tmp_path):
    from ijtorch.errors import IjtorchError

    with pytest.raises(IjtorchError, match="give input="):
        _run("")
    with pytest.raises(IjtorchError, match="does not exist"):
        _run(f"input=[{tmp_path / 'nothing'}] scheduler=local")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IjtorchError, match="holds no image files"):
        _run(f"input=[{tmp_path / 'empty'}] scheduler=local")
    with pytest.raises(IjtorchError, match="multiples of 16"):
        _run(f"input=[{tmp_path / 'empty'}] block=100")


def test_through_the_server_with_the_site_scheduler(folder, tmp_path, cluster):
    """What a Fiji without Python sends: the command runs on the server, which submits to its cluster
    ($IJTORCH_DASK_SCHEDULER); folders only under $IJTORCH_SCALE_ROOT."""
    from _serve_util import ServerProcess
    from ijtorch.io.tiff import read_tiff
    from ijtorch.serve.client import Client, ServerError
    from ijtorch.tasks.segment import segment

    models = tmp_path / "models"
    models.mkdir()
    current = folder / SMALL[0]
    image = read_tiff(current)
    out = tmp_path / "server-out"
    env = {"IJTORCH_SCALE_ROOT": str(tmp_path), "IJTORCH_DASK_SCHEDULER": cluster.scheduler_address}
    with ServerProcess(models, "--threads", "1", env=env) as server, Client(server.url) as client:
        header, arrays = client.imagej_command(COMMAND, f"input=[{folder}] output=[{out}]", image.data, image.axes,
                                               title=current.name, image_path=str(current))
        assert header["values"]["n_done"] == 3 and header["values"]["n_failed"] == 1
        assert any(f"dask: 2 worker(s) at {cluster.scheduler_address}" in line for line in header["log"])
        want = segment(image.data, image.axes, model="nuclei").labels
        np.testing.assert_array_equal(read_tiff(out / SMALL[0]).data, want)
        (shown,) = header["images"]
        np.testing.assert_array_equal(np.squeeze(arrays[shown["array"]]), want)
        for options, why in ((f"input=[{folder.parent.parent}] output=[{out}]", "inside the server's shared folder"),
                             (f"input=[{folder}] scheduler=tcp://elsewhere:8786", "uses the server's cluster")):
            with pytest.raises(ServerError, match=why) as err:
                client.imagej_command(COMMAND, options, image.data, image.axes)
            assert err.value.status == 422 and "Traceback" not in err.value.message


def test_a_z_stack_block_by_block_equals_the_in_memory_segmentation(tmp_path, cluster):
    """A ZYX stack of 3 planes (a 2D model: plane by plane, as segment() runs it) in 4 blocks per plane:
    the labels of the in-memory run, numbered plane after plane; ROIs on their slice."""
    import tifffile
    import zarr
    from distributed import Client
    from roifile import roiread

    from ijtorch.scale.blockwise import segment_blockwise
    from ijtorch.scale.synthetic import mosaic_tile
    from ijtorch.tasks.segment import segment

    planes = [mosaic_tile(0, 0, (256, 256), seed=s)[0] for s in (1, 2, 3)]
    volume = np.stack([p.astype(np.uint16) * (1 + k) for k, p in enumerate(planes)])  # other ranges per plane
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, metadata={"axes": "ZYX"}, tile=(128, 128))
    whole = segment(volume, "ZYX", model="nuclei")
    with Client(cluster) as client:
        result = segment_blockwise(path, tmp_path / "out", block=128, client=client)
    labels = np.asarray(zarr.open_group(str(result.labels), mode="r")["0"][:])
    assert labels.shape == volume.shape and result.n_blocks == 12 and result.near_seams > 0
    assert result.n_objects == whole.n_objects and labels.max() == whole.labels.max()
    # pixel for pixel and label for label: each plane numbered after the planes before it, as segment() joins them
    np.testing.assert_array_equal(labels, whole.labels)
    rois = roiread(tmp_path / "out" / "stack_RoiSet.zip")
    assert len(rois) == result.n_objects and {r.z_position for r in rois} == {1, 2, 3}
    rows = (tmp_path / "out" / "stack_measurements.csv").read_text().splitlines()
    assert rows[0].startswith("label,z,area") and len(rows) == result.n_objects + 1


def test_a_server_takes_folders_only_under_its_shared_folder(tmp_path, monkeypatch):
    from ijtorch.commands.command import get_command
    from ijtorch.commands.options import params_from_options
    from ijtorch.errors import IjtorchError

    cmd = get_command(COMMAND)

    def check(options: str) -> None:
        cmd.check_remote(params_from_options(cmd.params, options, command=COMMAND))

    monkeypatch.delenv("IJTORCH_SCALE_ROOT", raising=False)
    with pytest.raises(IjtorchError, match="takes no folders from clients"):
        check(f"input=[{tmp_path}]")
    monkeypatch.setenv("IJTORCH_SCALE_ROOT", str(tmp_path / "shared"))
    check(f"input=[{tmp_path / 'shared' / 'plate'}] output=[{tmp_path / 'shared' / 'out'}]")
    check(f"input=[{tmp_path / 'shared' / 'plate'}]")  # the default output, plate-labels, is beside it
    for options in (f"input=[{tmp_path / 'shared' / '..' / 'elsewhere'}]", "input=[shared/plate]",
                    f"input=[{tmp_path / 'shared'}] output=[/tmp]",
                    f"input=[{tmp_path / 'shared'}]"):  # its default output would be beside the shared folder
        with pytest.raises(IjtorchError, match="inside the server's shared folder"):
            check(options)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "link").symlink_to(tmp_path)  # a link out of the shared folder is outside it
    with pytest.raises(IjtorchError, match="inside the server's shared folder"):
        check(f"input=[{tmp_path / 'shared' / 'link' / 'plate'}]")


def test_esc_cancels_the_clusters_tasks(folder, tmp_path, cluster):
    """The cancel check (Esc in ImageJ) is asked as tasks finish: the run stops with the tasks not yet done
    cancelled, and the finished inputs' files are whole (each moved into place complete)."""
    from ijtorch.scale.cluster import DaskOptions
    from ijtorch.scale.submit import segment_on_cluster

    (folder / "broken.tif").unlink()
    for k in range(3):  # more inputs than workers: some are still waiting when Esc is pressed
        shutil.copy(SAMPLES / SMALL[k], folder / f"more{k}.tif")
    asked: list[bool] = []

    def cancel() -> bool:
        asked.append(True)
        return True

    out = tmp_path / "out"
    with pytest.raises(InterruptedError, match="cancelled"):
        segment_on_cluster(folder, out, options=lambda axes: {"model": "nuclei"}, model="nuclei",
                           dask=DaskOptions(cluster.scheduler_address), cancel=cancel)
    assert asked == [True]  # asked once, when the first task finished; the run stopped there
    done = sorted(p.stem for p in out.glob("*.tif"))
    assert 1 <= len(done) < 6
