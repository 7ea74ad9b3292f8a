"""3D StarDist: rays, distances, polyhedron rendering, NMS, packed tiling, model dirs, segment() routing,
training from folders (loss falls, resume, fine-tune), synthetic nuclei."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from ijtorch.models.stardist import geometry3d as s3
from ijtorch.models.stardist import network3d
from ijtorch.models.stardist.geometry import match_counts


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ball(shape, center, radius, anisotropy=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[(np.arange(s) - c) * a for s, c, a in zip(shape, center, anisotropy)], indexing="ij")
    return sum(g**2 for g in grids) <= radius**2


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


def _reference_distances(labels, rays, grid=(1, 1, 1)):
    """Straight per-voxel, per-ray marching (the definition star_distances_3d vectorises)."""
    out = np.zeros(tuple(-(-s // g) for s, g in zip(labels.shape, grid)) + (rays.n_rays,), np.float32)
    for i, j, k in np.ndindex(*out.shape[:3]):
        p = np.array([i, j, k]) * grid
        v = labels[tuple(p)]
        if v == 0:
            continue
        for r, ray in enumerate(rays.vectors):
            t = 0
            while True:
                t += 1
                q = p + np.rint(t * ray).astype(int)
                if np.any(q < 0) or np.any(q >= labels.shape) or labels[tuple(q)] != v:
                    out[i, j, k, r] = t - 1 + 0.5 / np.abs(ray).max()
                    break
    return out


# ----------------------------------------------------------------------------------------- rays
def test_rays_are_unit_vectors_spread_evenly_and_follow_the_anisotropy():
    rays = s3.fibonacci_rays(96)
    assert rays.vectors.shape == (96, 3) and rays.faces.shape == (2 * 96 - 4, 3)
    np.testing.assert_allclose(np.linalg.norm(rays.vectors, axis=1), 1.0, atol=1e-12)
    cos = rays.vectors @ rays.vectors.T
    np.fill_diagonal(cos, -1)
    nearest = np.degrees(np.arccos(cos.max(1)))
    assert nearest.max() < 2 * nearest.min(), (nearest.min(), nearest.max())
    # anisotropic rays are the isotropic ones expressed in voxel units: scaled back, they match
    aniso = s3.fibonacci_rays(96, (2.5, 1.0, 1.0))
    phys = aniso.vectors * (2.5, 1.0, 1.0)
    np.testing.assert_allclose(phys / np.linalg.norm(phys, axis=1, keepdims=True), rays.vectors, atol=1e-12)
    assert np.abs(aniso.vectors[:, 0]).mean() < 0.6 * np.abs(rays.vectors[:, 0]).mean()  # coarse z: fewer z-steps
    with pytest.raises(ValueError, match="n_rays=4"):
        s3.fibonacci_rays(4)
    with pytest.raises(ValueError, match="anisotropy="):
        s3.fibonacci_rays(32, (0, 1, 1))


# ------------------------------------------------------------------------------------ distances
def test_distances_equal_a_marching_reference_on_touching_objects(rng):
    lab = np.zeros((9, 13, 12), np.int32)
    lab[1:8, 2:11, 1:6] = 1
    lab[2:7, 3:12, 6:11] = 2  # touches object 1 along x
    lab[_ball(lab.shape, (4, 6, 8), 2.5)] = 3  # cuts into object 2
    rays = s3.fibonacci_rays(14, (2.0, 1.0, 1.0))
    for grid in ((1, 1, 1), (1, 2, 2)):
        d = s3.star_distances_3d(lab, rays, grid)
        np.testing.assert_array_equal(d, _reference_distances(lab, rays, grid))
    d = s3.star_distances_3d(lab, rays)
    assert np.all(d[lab == 0] == 0) and np.all(d[lab > 0] > 0)


def test_distances_of_a_sphere_equal_its_radius():
    r = 9.3
    lab = _ball((32, 32, 32), (16, 16, 16), r).astype(np.int32)
    rays = s3.fibonacci_rays(96)
    d = s3.star_distances_3d(lab, rays)
    assert d.shape == (32, 32, 32, 96) and d.dtype == np.float32
    assert np.all(np.abs(d[16, 16, 16] - r) <= 1.0), d[16, 16, 16]
    # a voxel 4 px towards +x: the ray closest to +x is ~4 shorter, the one closest to -x ~4 longer
    plus, minus = np.argmax(rays.vectors[:, 2]), np.argmin(rays.vectors[:, 2])
    assert d[16, 16, 20, plus] == pytest.approx(d[16, 16, 16, plus] - 4, abs=1.0)
    assert d[16, 16, 20, minus] == pytest.approx(d[16, 16, 16, minus] + 4, abs=1.0)


def test_anisotropic_sphere_has_equal_physical_ray_lengths_and_is_rendered_back():
    aniso, r = (2.0, 1.0, 1.0), 11.0
    lab = _ball((24, 40, 40), (12, 20, 20), r, aniso).astype(np.int32)  # a sphere in physical units
    rays = s3.fibonacci_rays(96, aniso)
    d = s3.star_distances_3d(lab, rays)[12, 20, 20]
    physical = np.linalg.norm(d[:, None] * rays.vectors * aniso, axis=1)
    assert np.all(np.abs(physical - r) <= max(aniso)), (physical.min(), physical.max())
    out = s3.polyhedra_to_labels(np.array([[12, 20, 20]]), d[None], rays, lab.shape)
    assert _iou(out > 0, lab > 0) > 0.9
    prob = s3.object_probabilities_3d(lab, aniso)
    assert prob[12, 20, 20] == pytest.approx(1.0)
    # 3 z-steps and 6 px along x are both 6 px from the centre, 5 to 6 px from the surface: about
    # 0.5 (the voxelised surface is jagged); counted in voxels, the x point would look central
    assert prob[15, 20, 20] == pytest.approx(6 / 11, abs=0.1) and prob[12, 20, 26] == pytest.approx(6 / 11, abs=0.1)
    assert s3.object_probabilities_3d(lab, 1.0)[12, 20, 26] > 0.7
    assert s3.object_probabilities_3d(lab, aniso, (1, 2, 2)).shape == (24, 20, 20)


# ------------------------------------------------------------------------------------ rendering
def test_polyhedron_voxels_are_exactly_those_inside_the_faces():
    from scipy.spatial import ConvexHull

    rays = s3.fibonacci_rays(32, (2.0, 1.0, 1.0))
    shape = (20, 30, 30)
    for center in ((10, 15, 15), (9.6, 14.3, 15.2)):  # on a voxel (tabulated) and off (computed)
        d = np.full(32, 7.5)  # equal distances: the polyhedron is the convex hull of its vertices
        sl, mask = s3.polyhedron_mask(center, d, rays, shape)
        hull = ConvexHull(np.asarray(center) + d[:, None] * rays.vectors)
        pts = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1).reshape(-1, 3)
        signed = pts @ hull.equations[:, :3].T + hull.equations[:, 3]
        inside = np.all(signed <= 0, axis=1)
        clear = np.abs(signed).min(axis=1) > 1e-6  # not on a face plane (rounding may go either way)
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(mask.ravel()[clear], inside[clear])
        assert set(np.flatnonzero(inside)) >= set(np.flatnonzero(mask.ravel() & clear))
    # star-shaped (non-convex) distances: the tabulated and the direct test agree voxel for voxel
    rng = np.random.default_rng(1)
    d = rng.uniform(3, 9, 32)
    _, tab = s3.polyhedron_mask((10, 15, 15), d, rays, shape)
    _, direct = s3.polyhedron_mask((10 + 1e-9, 15, 15), d, rays, shape)
    assert tab.shape == direct.shape and np.mean(tab != direct) < 1e-3
    assert abs(tab.sum() / s3.polyhedron_volumes(d[None], rays)[0] - 1) < 0.15


def test_rendered_distances_reproduce_ellipsoids():
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    for aniso in ((1.0, 1.0, 1.0), (2.0, 1.0, 1.0)):
        rays = s3.fibonacci_rays(96, aniso)
        shape = (int(40 / aniso[0]), 40, 40)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
        ious = []
        for _ in range(5):
            semi, rot = rng.uniform(6, 12, 3), Rotation.random(random_state=rng).as_matrix()
            local = ((grid - np.array(shape) / 2) * aniso) @ rot  # physical offsets in the ellipsoid's frame
            lab = (np.sum((local / semi) ** 2, -1) <= 1).astype(np.int32)
            dist, prob = s3.star_distances_3d(lab, rays), s3.object_probabilities_3d(lab, aniso)
            centre = np.unravel_index(np.argmax(prob), shape)
            ious.append(_iou(s3.polyhedra_to_labels(np.array([centre]), dist[centre][None], rays, shape) > 0, lab > 0))
        # 96 rays: the polyhedron's flat faces cut the curved surface; measured 0.886 to 0.926
        assert min(ious) > 0.87 and np.mean(ious) > 0.9, (aniso, np.round(ious, 3))


def test_rendered_distances_reproduce_simulated_nuclei():
    from ijtorch.simulate.nuclei import simulate_nuclei_3d

    vol = simulate_nuclei_3d((24, 64, 64), n_nuclei=10, radius=(4.0, 8.0), anisotropy=2.0, seed=3)
    lab = vol.labels
    assert lab.max() >= 8 and vol.image.dtype == np.uint16 and vol.image.shape == lab.shape
    assert vol.image[lab > 0].mean() > 3 * vol.image[lab == 0].mean()
    np.testing.assert_array_equal(simulate_nuclei_3d((24, 64, 64), n_nuclei=10, radius=(4.0, 8.0), seed=3).image,
                                  vol.image)  # seeded
    with pytest.raises(ValueError, match="shape=\\(64, 64\\)"):
        simulate_nuclei_3d((64, 64))
    rays = s3.fibonacci_rays(96, vol.anisotropy)
    dist, prob = s3.star_distances_3d(lab, rays), s3.object_probabilities_3d(lab, vol.anisotropy)
    ious = []
    for k in range(1, int(lab.max()) + 1):
        centre = np.unravel_index(np.argmax(np.where(lab == k, prob, -1)), lab.shape)
        ious.append(_iou(s3.polyhedra_to_labels(np.array([centre]), dist[centre][None], rays, lab.shape) > 0, lab == k))
    # small nuclei (2 to 8 z-steps thick), some cut by neighbours or the border: measured 0.854 to 0.919
    assert min(ious) > 0.83 and np.mean(ious) > 0.87, np.round(ious, 3)


def test_instances_from_ground_truth_maps_match_simulated_nuclei():
    from ijtorch.simulate.nuclei import simulate_nuclei_3d

    vol = simulate_nuclei_3d((24, 80, 80), n_nuclei=25, radius=(4.0, 8.0), spacing=0.75, seed=5)
    rays, grid = s3.fibonacci_rays(64, vol.anisotropy), (1, 2, 2)
    prob = s3.object_probabilities_3d(vol.labels, vol.anisotropy, grid)
    dist = s3.star_distances_3d(vol.labels, rays, grid)
    pred, details = s3.instances_from_maps_3d(prob, dist, rays, vol.labels.shape, grid=grid, prob_threshold=0.5,
                                              nms_threshold=0.4)
    n = int(vol.labels.max())
    tp, fp, fn = match_counts(vol.labels, pred, (0.5,))[0.5]
    assert n >= 20 and tp >= n - 1 and fp <= 1, (tp, fp, fn, n)
    assert pred.max() == len(details["prob"]) and np.all(np.diff(details["prob"]) <= 0)
    assert np.all(details["points"] % grid == 0)


def test_nms_removes_duplicates_and_keeps_touching_objects():
    rays = s3.fibonacci_rays(64)
    shape = (40, 40, 60)
    d = np.full((5, 64), 6.0)
    d[1] *= 1.1
    pts = np.array([[20, 20, 20], [20, 20, 21], [20, 21, 20], [20, 20, 33], [20, 20, 46]])
    scores = np.array([0.9, 0.95, 0.8, 0.7, 0.75])
    keep = s3.polyhedron_nms(pts, d, scores, rays, shape, nms_threshold=0.4)
    assert list(keep) == [1, 4, 3]  # one of the three duplicates (the best); touching neighbours stay
    assert len(s3.polyhedron_nms(pts, d, scores, rays, shape, nms_threshold=1.0)) == 5
    lab = s3.polyhedra_to_labels(pts[keep], d[keep], rays, shape, scores=scores[keep])
    assert lab.max() == 3 and lab[20, 20, 21] == 1 and lab[20, 20, 46] == 2 and lab[20, 20, 33] == 3
    with pytest.raises(ValueError, match="nms_threshold=1.5"):
        s3.polyhedron_nms(pts, d, scores, rays, shape, nms_threshold=1.5)
    # a big object whose IoU is estimated on a subsample: its shifted duplicate still goes
    big = np.full((2, 64), 18.0)
    keep = s3.polyhedron_nms(np.array([[20, 30, 30], [21, 30, 31]]), big, np.array([0.6, 0.5]), rays, (40, 60, 60),
                             nms_threshold=0.4, max_samples=512)
    assert list(keep) == [0]


# --------------------------------------------------------------------------------------- models
def _constant_model(prob_logit=10.0, distance=5.0, grid=(1, 2, 2), n_rays=32, anisotropy=(1.0, 1.0, 1.0)):
    """A 3D model whose every grid voxel is a candidate with the same distances (deterministic labels)."""
    import torch

    from ijtorch.models.stardist.model3d import StarDist3DModel

    torch.manual_seed(0)
    net = network3d.StarDistNet3D(n_rays, 1, grid=grid, base_channels=4, depth=2, head_channels=4)
    with torch.no_grad():
        for head, bias in ((net.prob, prob_logit), (net.dist, distance)):
            head.weight.zero_()
            head.bias.fill_(bias)
    return StarDist3DModel(net, {"name": "const3d", "anisotropy": list(anisotropy),
                                 "thresholds": {"prob": 0.5, "nms": 0.3}}, device="cpu")


def test_packed_tiled_prediction_equals_whole_volume_and_pointwise_truth(rng):
    """Grid packing, tiling and stitching are exact: a pointwise 'network' gives its values on the grid."""
    import torch

    model = _constant_model(grid=(1, 2, 2), n_rays=6)

    class Pointwise(torch.nn.Module):
        grid, n_rays, config = (1, 2, 2), 6, model.net.config

        def size_multiple(self):
            return (4, 4, 4)

        def forward(self, x):
            sub = x[:, :, ::1, ::2, ::2]
            return torch.cat([sub * 2.0] + [sub + k for k in range(6)], dim=1)

    model.net = Pointwise()
    vol = rng.normal(size=(13, 37, 29)).astype(np.float32)
    p_whole, d_whole = model.predict_maps(vol, normalize=False, tile_size=64, overlap=0)
    p_tiled, d_tiled = model.predict_maps(vol, normalize=False, tile_size=(8, 16, 12), overlap=(4, 6, 6))
    sub = vol[::1, ::2, ::2]
    assert p_whole.shape == (13, 19, 15) and d_whole.shape == (13, 19, 15, 6)
    np.testing.assert_allclose(p_whole, 1 / (1 + np.exp(-2 * sub)), rtol=1e-5)
    np.testing.assert_allclose(d_whole, sub[..., None] + np.arange(6), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(p_tiled, p_whole)
    np.testing.assert_array_equal(d_tiled, d_whole)


def test_model_dir_round_trip_and_registry(tmp_path, monkeypatch, rng):
    import torch

    from ijtorch.models import store
    from ijtorch.models.stardist.model3d import StarDist3DModel

    torch.manual_seed(1)
    net = network3d.StarDistNet3D(16, 1, grid=(1, 2, 2), base_channels=4, depth=2, head_channels=4)
    model = StarDist3DModel(net, {"name": "tiny3d", "anisotropy": [2.0, 1.0, 1.0]}, device="cpu")
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    path = model.save(tmp_path / "tiny3d")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "stardist3d" and cfg["axes"] == "ZYX" and cfg["grid"] == [1, 2, 2]
    assert cfg["anisotropy"] == [2.0, 1.0, 1.0] and cfg["architecture"]["n_rays"] == 16
    loaded = store.load_model("tiny3d", device="cpu")
    assert isinstance(loaded, StarDist3DModel) and loaded.rays.anisotropy == (2.0, 1.0, 1.0)
    vol = rng.normal(size=(8, 24, 20)).astype(np.float32)
    p1, d1 = model.predict_maps(vol)
    p2, d2 = loaded.predict_maps(vol)
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    np.testing.assert_allclose(d1, d2, atol=1e-5)
    with pytest.raises(ValueError, match="ZYX volume"):
        loaded.predict_maps(vol[0])


def test_segment_routes_z_stacks_to_a_3d_model(tmp_path, monkeypatch, rng):
    from ijtorch.tasks.segment import segment

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    _constant_model().save(tmp_path / "const3d")
    vol = rng.normal(size=(12, 32, 28)).astype(np.float32)
    res = segment(vol, "ZYX", model="const3d", device="cpu")
    assert res.axes == "ZYX" and res.labels.shape == vol.shape and res.labels.dtype == np.uint16
    assert res.n_objects == res.labels.max() > 1 and res.objects_per_plane == (res.n_objects,)
    spans = [len(np.unique(np.nonzero(res.labels == k)[0])) for k in range(1, res.n_objects + 1)]
    assert max(spans) >= 5  # one object across many planes: segmented in 3D, not plane by plane
    movie = np.stack([vol, vol[:, ::-1]]).transpose(1, 0, 2, 3)[:, :, None]  # Z T C Y X
    res_t = segment(movie, "ZTCYX", model="const3d", device="cpu")
    assert res_t.axes == "ZTYX" and res_t.labels.shape == (12, 2, 32, 28) and len(res_t.objects_per_plane) == 2
    first, second = res_t.labels[:, 0], res_t.labels[:, 1]
    assert second[second > 0].min() == first.max() + 1  # labels unique over frames
    np.testing.assert_array_equal(first, res.labels)
    with pytest.raises(ValueError, match="3D \\(ZYX\\) model but axes='YX'"):
        segment(vol[0], "YX", model="const3d", device="cpu")
    with pytest.raises(ValueError, match="test_time_augmentation=True is available for 2D"):
        segment(vol, "ZYX", model="const3d", device="cpu", test_time_augmentation=True)
    with pytest.raises(ValueError, match="scale=2.0 is available for 2D"):
        segment(vol, "ZYX", model="const3d", device="cpu", scale=2)


def test_cli_segments_a_z_stack_tiff_with_a_3d_model(tmp_path, rng, capsys):
    from ijtorch.cli import main
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.tasks.segment import segment

    model = _constant_model(anisotropy=(2.0, 1.0, 1.0)).save(tmp_path / "const3d")
    vol = rng.normal(100, 10, size=(10, 24, 20)).astype(np.float32)
    write_imagej_tiff(tmp_path / "stack.tif", vol, "ZYX")
    assert main(["segment", str(tmp_path / "stack.tif"), "--model", str(model), "--output", str(tmp_path / "out"),
                 "--device", "cpu"]) == 0
    written = tifffile.imread(tmp_path / "out" / "stack.tif")  # an independent reader
    expected = segment(vol, "ZYX", model=model, device="cpu").labels
    assert written.shape == (10, 24, 20) and expected.max() > 1
    np.testing.assert_array_equal(written, expected)
    assert f"{expected.max()} objects" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def nuclei_volumes():
    from ijtorch.simulate.nuclei import simulate_nuclei_3d
    from ijtorch.train.data import Pair

    vols = [simulate_nuclei_3d((16, 48, 48), n_nuclei=10, radius=(4.0, 7.0), anisotropy=2.0, seed=s) for s in range(4)]
    return [Pair(f"vol{s}", v.image, v.labels) for s, v in enumerate(vols)]


def test_tiny_3d_model_loss_falls(nuclei_volumes):
    import torch

    from ijtorch.models.stardist.network import stardist_loss
    from ijtorch.train.data import AugmentConfig
    from ijtorch.core.normalize import percentile_normalize
    from ijtorch.train.stardist3d_train import _patch_batches
    from ijtorch.train.trainer import Trainer

    aniso, grid = (2.0, 1.0, 1.0), (1, 2, 2)
    rays = s3.fibonacci_rays(32, aniso)
    items = [(percentile_normalize(p.image), p.labels) for p in nuclei_volumes]

    def data(n):
        return _patch_batches(items, n_batches=n, batch_size=2, patch=(16, 32, 32), rays=rays, anisotropy=aniso,
                              grid=grid, augment=AugmentConfig(elastic_prob=0.0), fg_fraction=0.9)

    torch.manual_seed(0)
    net = network3d.StarDistNet3D(32, 1, grid=grid, base_channels=8, depth=2, head_channels=8)
    fixed = list(data(2)(np.random.default_rng(7)))
    x, p, d = fixed[0]
    assert x.shape == (2, 1, 16, 32, 32) and p.shape == (2, 1, 16, 16, 16) and d.shape == (2, 32, 16, 16, 16)

    def fixed_loss():
        net.eval()
        with torch.no_grad():
            return np.mean([float(stardist_loss(net, tuple(torch.from_numpy(a) for a in b))[0]) for b in fixed])

    before = fixed_loss()
    Trainer(net, stardist_loss, data(6), epochs=4, lr=1e-2, seed=0, device="cpu", progress_bar=False).fit()
    after = fixed_loss()
    assert after < 0.8 * before, f"loss {before:.3f} -> {after:.3f}"


def test_train_3d_from_folders_resumes_and_fine_tunes(nuclei_volumes, tmp_path):
    from ijtorch.models.store import load_model_dir
    from ijtorch.tasks.segment import segment, train_segmentation

    for sub in ("images", "labels"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    for p in nuclei_volumes:
        tifffile.imwrite(tmp_path / "data" / "images" / f"{p.name}.tif", p.image)
        tifffile.imwrite(tmp_path / "data" / "labels" / f"{p.name}.tif", p.labels)
    kw = dict(steps_per_epoch=2, batch_size=2, patch_size=(16, 32, 32), device="cpu", progress_bar=False,
              optimize_thresholds=False, evaluate=False, seed=0, val_fraction=0.25)
    arch = dict(n_rays=24, base_channels=4, head_channels=4)
    s1 = train_segmentation(tmp_path / "data", None, output=tmp_path / "m1", epochs=2, **arch, **kw)
    cfg = load_model_dir(tmp_path / "m1").config
    assert s1["method"] == "stardist3d" and cfg["model_type"] == "stardist3d" and cfg["axes"] == "ZYX"
    assert cfg["anisotropy"][0] > 1.5 and cfg["grid"] == [1, 2, 2] and cfg["architecture"]["n_rays"] == 24
    assert len(cfg["training"]["val_names"]) == 1 and s1["n_train"] == 3
    assert all(o >= 8 for o in cfg["tiling"]["overlap"])

    # resume: a longer run continues from the checkpoint; the first epochs are not re-run
    s2 = train_segmentation(tmp_path / "data", None, output=tmp_path / "m1", epochs=3, resume=True, **arch, **kw)
    hist = load_model_dir(tmp_path / "m1").config["training"]["history"]
    assert s2["epochs_run"] == 3 and [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[:2] == cfg["training"]["history"]

    # fine-tune: architecture and rays come from the base model whatever is asked
    train_segmentation(tmp_path / "data", None, output=tmp_path / "m2", base_model=tmp_path / "m1", epochs=1,
                       n_rays=8, anisotropy=1.0, **kw)
    cfg2 = load_model_dir(tmp_path / "m2").config
    assert cfg2["training"]["base_model"] == str(tmp_path / "m1")
    assert cfg2["architecture"] == load_model_dir(tmp_path / "m1").config["architecture"]
    assert cfg2["anisotropy"] == cfg["anisotropy"]

    res = segment(nuclei_volumes[0].image, "ZYX", model=tmp_path / "m2", device="cpu", prob_threshold=0.9)
    assert res.labels.shape == (16, 48, 48) and res.axes == "ZYX"
    with pytest.raises(ValueError, match="expected 'stardist3d'"):
        from ijtorch.train.stardist3d_train import train_stardist3d

        train_stardist3d(nuclei_volumes, output=tmp_path / "m3", base_model=_save_2d(tmp_path), **kw)


def _save_2d(tmp_path):
    from ijtorch.models.stardist import network
    from ijtorch.models.stardist.model import StarDistModel

    return StarDistModel(network.StarDistNet(8, 1, base_channels=4, depth=2, head_channels=4), {}).save(tmp_path / "m2d")
