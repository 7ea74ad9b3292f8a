"""Training core: normalisation, joint augmentation, splits, Trainer (loss falls, kill/resume)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijtorch.core.normalize import percentile_normalize
from ijtorch.train.data import AugmentConfig, load_pairs, random_patch, split_train_val
from ijtorch.train.trainer import CHECKPOINT_NAME, Trainer

NO_INTENSITY = dict(intensity_prob=0.0, gamma_prob=0.0, noise_prob=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_percentile_normalize_maps_percentiles_to_0_and_1(rng):
    x = rng.integers(0, 4000, size=(3, 64, 64)).astype(np.uint16)
    y = percentile_normalize(x, 1.0, 99.8)
    assert y.dtype == np.float32
    assert np.percentile(y, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert np.percentile(y, 99.8) == pytest.approx(1.0, abs=1e-5)
    per_plane = percentile_normalize(x * np.array([1, 2, 3], np.uint16)[:, None, None], axes=(-2, -1))
    for p in per_plane:
        assert np.percentile(p, 99.8) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="low=50.*high=10"):
        percentile_normalize(x, 50, 10)
    with pytest.raises(TypeError, match="numpy array"):
        percentile_normalize([1, 2, 3])  # type: ignore[arg-type]


def _labels_with_disks(rng, shape=(96, 96), n=8):
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, n + 1):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        lab[(yy - cy) ** 2 + ((xx - cx) / 1.5) ** 2 < rng.integers(16, 64)] = k
    return lab


def test_flips_and_rotations_keep_image_and_labels_aligned(rng):
    lab = _labels_with_disks(rng)
    img = lab.astype(np.float32)  # the image *is* the label map, so alignment is exact equality
    cfg = AugmentConfig(scale_prob=0.0, elastic_prob=0.0, **NO_INTENSITY)
    for _ in range(20):
        pi, pl = random_patch(img, lab, (64, 64), rng, augment=cfg)
        assert pi.shape == pl.shape == (64, 64)
        np.testing.assert_array_equal(pi, pl.astype(np.float32))


def test_zoom_and_elastic_keep_labels_integer_and_aligned(rng):
    lab = _labels_with_disks(rng)
    img = (lab > 0).astype(np.float32)
    cfg = AugmentConfig(scale_prob=1.0, elastic_prob=1.0, **NO_INTENSITY)
    for _ in range(10):
        pi, pl = random_patch(img, lab, (64, 64), rng, augment=cfg)
        assert pl.dtype == lab.dtype
        assert set(np.unique(pl)) <= set(np.unique(lab))  # nearest neighbour: no new label values
        agree = np.mean((pi > 0.5) == (pl > 0))
        assert agree > 0.97, f"image/mask agreement {agree:.3f} after zoom+elastic"


def test_patches_balance_foreground(rng):
    lab = np.zeros((400, 400), np.int32)
    lab[10:20, 10:20] = 1  # 0.06 % foreground
    hits = sum(random_patch(lab.astype(np.float32), lab, (32, 32), rng, fg_fraction=0.8)[1].any() for _ in range(50))
    assert hits >= 30


def test_split_is_deterministic_disjoint_and_complete():
    tr, va = split_train_val(90, val_fraction=0.15, seed=0)
    assert (tr, va) == split_train_val(90, val_fraction=0.15, seed=0)
    assert len(va) == 14 and not set(tr) & set(va) and sorted(tr + va) == list(range(90))
    assert split_train_val(90, val_fraction=0.15, seed=1)[1] != va
    assert len(split_train_val(3, val_fraction=0.1)[1]) == 1
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        split_train_val(10, val_fraction=1.5)


def _tiny_net(seed=0):
    from ijtorch.models.stardist.network import StarDistNet

    torch.manual_seed(seed)
    return StarDistNet(8, 1, base_channels=4, depth=2, head_channels=8)


@pytest.fixture(scope="module")
def nuclei_items(shared_data):
    from ijtorch.train.stardist_train import _patch_batches

    pairs = load_pairs(shared_data / "nuclei_dsb2018" / "train")[:6]
    items = [(percentile_normalize(p.image), p.labels) for p in pairs]
    return lambda n: _patch_batches(items, n_batches=n, batch_size=4, patch=48, n_rays=8,
                                    augment=AugmentConfig(), fg_fraction=0.9)


def test_batches_made_in_worker_processes_equal_those_made_in_process(shared_data):
    from ijtorch.train.stardist_train import _patch_batches

    pairs = load_pairs(shared_data / "nuclei_dsb2018" / "train")[:4]
    items = [(percentile_normalize(p.image), p.labels) for p in pairs]
    sources = [_patch_batches(items, n_batches=5, batch_size=2, patch=40, n_rays=8, augment=AugmentConfig(),
                              fg_fraction=0.9, workers=w) for w in (0, 2)]
    try:
        for epoch in (1, 2):  # the pool is reused across epochs
            serial, parallel = (list(src(np.random.default_rng([0, epoch]))) for src in sources)
            assert len(serial) == len(parallel) == 5
            for a, b in zip(serial, parallel):
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y)
            assert not np.array_equal(serial[0][0], serial[1][0])  # batches differ from one another
        pool = sources[1]._pool
        assert pool is not None
    finally:
        sources[1].close()
    assert sources[1]._pool is None
    with pytest.raises(RuntimeError):
        pool.submit(int, 1)  # shut down


def test_tiny_model_loss_falls_on_real_nuclei(nuclei_items):
    from ijtorch.models.stardist.network import stardist_loss

    net = _tiny_net()
    fixed = list(nuclei_items(2)(np.random.default_rng(7)))

    def fixed_loss():
        net.eval()
        with torch.no_grad():
            return np.mean([float(stardist_loss(net, tuple(torch.from_numpy(a) for a in b))[0]) for b in fixed])

    before = fixed_loss()
    Trainer(net, stardist_loss, nuclei_items(8), epochs=4, lr=1e-2, seed=0, device="cpu",
            progress_bar=False).fit()
    after = fixed_loss()
    assert after < 0.8 * before, f"loss {before:.3f} -> {after:.3f}"


def test_kill_and_resume_matches_uninterrupted_run(nuclei_items, tmp_path):
    from ijtorch.models.stardist.network import stardist_loss

    data = nuclei_items(2)
    kw = dict(epochs=4, lr=2e-3, seed=3, device="cpu", progress_bar=False, restore_best=False, scheduler="cosine")
    ref = _tiny_net()
    Trainer(ref, stardist_loss, data, **kw).fit()

    events = []

    def bad_listener(event):
        events.append(event)
        raise RuntimeError("broken UI")  # must never stop training

    killed = _tiny_net()
    r1 = Trainer(killed, stardist_loss, data, checkpoint_dir=tmp_path, progress=bad_listener,
                 cancel=lambda: len(r1_epochs) >= 2, **kw)
    r1_epochs: list = []
    r1.progress = lambda e: (r1_epochs.append(e) if e.phase == "epoch" else None, bad_listener(e))
    res1 = r1.fit()
    assert res1.cancelled and res1.epochs_run == 2
    assert (tmp_path / CHECKPOINT_NAME).exists()
    assert not list(tmp_path.glob("*.tmp")), "temporary checkpoint files left behind"

    fresh = _tiny_net(seed=99)  # different init: everything must come from the checkpoint
    r2 = Trainer(fresh, stardist_loss, data, checkpoint_dir=tmp_path, resume=True, **kw)
    seen = []
    r2.progress = lambda e: seen.append(e.i) if e.phase == "epoch" else None
    res2 = r2.fit()
    assert seen == [3, 4] and res2.epochs_run == 4
    assert [h["epoch"] for h in res2.history] == [1, 2, 3, 4]
    for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")


def test_trainer_rejects_bad_arguments():
    net = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="scheduler='step'.*cosine"):
        Trainer(net, lambda m, b: m(b).sum(), [torch.zeros(1, 2)], scheduler="step", device="cpu")
    with pytest.raises(ValueError, match="epochs=0"):
        Trainer(net, lambda m, b: m(b).sum(), [torch.zeros(1, 2)], epochs=0, device="cpu")
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        Trainer(net, lambda m, b: m(b).sum(), [torch.zeros(1, 2)], resume=True, device="cpu")


def test_checkpoint_contains_no_pickle(nuclei_items, tmp_path):
    from safetensors import safe_open

    from ijtorch.models.stardist.network import stardist_loss

    Trainer(_tiny_net(), stardist_loss, nuclei_items(1), epochs=1, checkpoint_dir=tmp_path, device="cpu",
            progress_bar=False).fit()
    with safe_open(str(tmp_path / CHECKPOINT_NAME), framework="pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert any(k.startswith("optim.") for k in keys) and "rng.torch" in keys
    assert '"epoch": 1' in meta["ijtorch_trainer"]


def test_train_stardist_saves_split_and_fine_tunes(shared_data, tmp_path):
    from ijtorch.models.store import load_model_dir
    from ijtorch.train.stardist_train import train_stardist

    pairs = load_pairs(shared_data / "nuclei_dsb2018" / "train")[:8]
    kw = dict(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, device="cpu", progress_bar=False,
              optimize_thresholds=False, evaluate=False, seed=0, val_fraction=0.25)
    s1 = train_stardist(pairs, output=tmp_path / "m1", n_rays=8, base_channels=4, depth=2, head_channels=4, **kw)
    cfg = load_model_dir(tmp_path / "m1").config
    tr, va = split_train_val(8, val_fraction=0.25, seed=0)
    assert cfg["training"]["val_names"] == [pairs[i].name for i in va]
    assert cfg["training"]["train_names"] == [pairs[i].name for i in tr]
    assert s1["n_val"] == 2 and cfg["architecture"]["n_rays"] == 8
    s2 = train_stardist(pairs, output=tmp_path / "m2", base_model=tmp_path / "m1", **kw)
    cfg2 = load_model_dir(tmp_path / "m2").config
    assert cfg2["training"]["base_model"] == str(tmp_path / "m1") and cfg2["architecture"] == cfg["architecture"]
    assert s2["epochs_run"] == 1
    with pytest.raises(ValueError, match="val_names contains names not in pairs"):
        train_stardist(pairs, output=tmp_path / "m3", val_names=["nope"], **kw)
    with pytest.raises(ValueError, match="keep='last'"):
        train_stardist(pairs, output=tmp_path / "m3", keep="last", **kw)
    # keep="final": the saved weights are the last epoch's, whatever the validation loss did
    from safetensors.numpy import load_file

    kw["epochs"] = 3
    train_stardist(pairs, output=tmp_path / "m4", base_model=tmp_path / "m1", keep="final",
                   checkpoint_dir=tmp_path / "ck4", **kw)
    cfg4 = load_model_dir(tmp_path / "m4").config
    assert cfg4["training"]["weights_of_epoch"] == cfg4["training"]["epochs_run"] == 3
    saved = load_file(tmp_path / "m4" / "weights.safetensors")
    last = {k[6:]: v for k, v in load_file(tmp_path / "ck4" / "last.safetensors").items() if k.startswith("model.")}
    assert saved.keys() == last.keys()
    for k in saved:
        np.testing.assert_array_equal(saved[k], last[k])
