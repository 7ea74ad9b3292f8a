"""The grid-2 star-convex network (``StarDistNet(stem=2)``: U-Net and heads at half resolution)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijtorch.models.stardist import network

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stem_net(seed: int = 0):
    torch.manual_seed(seed)
    return network.StarDistNet(32, 1, base_channels=8, depth=2, head_channels=16, stem=2).eval()


def test_full_resolution_maps_hold_each_grid_cell_at_its_pixels():
    net = _stem_net()
    assert net.size_multiple() == (8, 8) and net.config["stem"] == 2
    assert "stem" not in network.StarDistNet(32, 1, base_channels=8, depth=2).config  # earlier configs unchanged
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        full, cells = net(x), net.forward_grid(x)
    assert full.shape == (2, 33, 64, 96) and cells.shape == (2, 33, 32, 48)
    for dy in (0, 1):  # NMS reads pixel (2i, 2j); its three neighbours in the cell hold the same values
        for dx in (0, 1):
            assert torch.equal(full[..., dy::2, dx::2], cells)
    rebuilt = network.StarDistNet(**net.config)
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), full)


def test_inference_copy_and_sparse_distances_match_the_network():
    net = _stem_net(1)
    for m in net.modules():  # non-trivial batch-norm statistics, so folding them is tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 1, 48, 64)
    fast = network.inference_copy(net)
    with torch.no_grad():
        full = net(x)
        np.testing.assert_allclose(fast(x.contiguous(memory_format=torch.channels_last)).numpy(), full.numpy(), atol=1e-5)
        sparse = fast.forward_sparse(x)
        np.testing.assert_allclose(sparse[:, 0].numpy(), full[:, 0].numpy(), atol=1e-5)
        rows = sparse[0, 1:].permute(1, 2, 0)[[0, 10, 47], [0, 33, 63]]
        np.testing.assert_allclose(fast.distances(rows).numpy(), full[0, 1:, [0, 10, 47], [0, 33, 63]].T.numpy(), atol=1e-5)


def test_the_loss_reads_the_targets_at_the_grid_pixels_only():
    net = _stem_net(2).train()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 1, 32, 32)).astype(np.float32))
    prob = torch.from_numpy((rng.random((2, 1, 32, 32)) > 0.5).astype(np.float32))
    dist = torch.from_numpy(rng.random((2, 32, 32, 32)).astype(np.float32) * 5)
    torch.manual_seed(0)
    loss, _ = network.stardist_loss(net, (x, prob, dist))
    off_grid_prob, off_grid_dist = prob.clone(), dist.clone()
    off_grid_prob[..., 1::2, :] = 1 - off_grid_prob[..., 1::2, :]
    off_grid_dist[..., :, 1::2] += 7
    torch.manual_seed(0)
    same, _ = network.stardist_loss(net, (x, off_grid_prob, off_grid_dist))
    assert float(same) == pytest.approx(float(loss), rel=1e-6)
    on_grid = prob.clone()
    on_grid[..., ::2, ::2] = 1 - on_grid[..., ::2, ::2]
    torch.manual_seed(0)
    other, _ = network.stardist_loss(net, (x, on_grid, dist))
    assert abs(float(other) - float(loss)) > 1e-3
    loss.backward()
    assert net.stem[0][0].weight.grad.abs().sum() > 0


def test_init_from_a_full_resolution_model_moves_its_first_level_into_the_stem(tmp_path):
    from ijtorch.models.folder import load_model_dir
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.train.stardist_train import _init_matching

    torch.manual_seed(3)
    source = network.StarDistNet(32, 1, base_channels=8, depth=2, head_channels=16)
    StarDistModel(source, {"grid": 2}).save(tmp_path / "full")
    net = _stem_net(4)
    fresh = net.unet.encoders[0][0].weight.detach().clone()
    _init_matching(net, load_model_dir(tmp_path / "full"), 2)
    src = source.state_dict()
    for k, v in net.state_dict().items():
        if k.startswith("stem.0."):
            assert torch.equal(v, src["unet.encoders.0." + k[len("stem.0."):]])
        elif k == "unet.encoders.0.0.weight":  # 8 input channels here, 1 in the source: stays fresh
            assert torch.equal(v, fresh)
        else:
            assert torch.equal(v, src[k]), k


def test_init_from_a_narrower_model_computes_what_it_computes_and_then_trains_the_new_channels(tmp_path):
    from ijtorch.models.folder import load_model_dir
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.train.stardist_train import _init_matching

    narrow = _stem_net(5)
    for m in narrow.modules():  # trained-looking normalisation statistics, not the identity defaults
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    StarDistModel(narrow, {"grid": 2}).save(tmp_path / "narrow")
    torch.manual_seed(6)
    wide = network.StarDistNet(32, 1, base_channels=16, depth=2, head_channels=16, stem=2)
    _init_matching(wide, load_model_dir(tmp_path / "narrow"), 2)
    x = torch.randn(2, 1, 32, 32)
    for mode in ("eval", "train"):  # train: batch statistics, also per channel
        getattr(narrow, mode)(), getattr(wide, mode)()
        with torch.no_grad():
            assert torch.allclose(wide(x), narrow(x), atol=1e-5), mode
    # the decoder's concatenated input: the narrow skip channels sit after the wide upsampled ones
    dec_old, dec_new = narrow.unet.decoders[0][0].weight, wide.unet.decoders[0][0].weight
    half_old, half_new = dec_old.shape[1] // 2, dec_new.shape[1] // 2
    assert torch.equal(dec_new[:dec_old.shape[0], half_new:half_new + half_old], dec_old[:, half_old:])
    # the new channels learn: one step moves the zeros that kept them out of the old outputs
    loss = network.stardist_loss(wide, (x, (x > 0).float(), x.abs().expand(2, 32, 32, 32) * 3))[0]
    loss.backward()
    assert wide.features[0].weight.grad[:, 8:].abs().sum() > 0


def test_init_from_a_model_with_a_narrower_head_computes_what_it_computes(tmp_path):
    """Only the 3x3 convolution before the heads widens (StarDist's 128 channels after the U-Net):
    the old head channels keep their weights, the new ones start silent, the output is the same."""
    from ijtorch.models.folder import load_model_dir
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.train.stardist_train import _init_matching

    narrow = _stem_net(7)
    StarDistModel(narrow, {"grid": 2}).save(tmp_path / "narrow")
    torch.manual_seed(8)
    wide = network.StarDistNet(32, 1, base_channels=8, depth=2, head_channels=64, stem=2).eval()
    _init_matching(wide, load_model_dir(tmp_path / "narrow"), 2)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(wide(x), narrow(x), atol=1e-5)
    assert torch.equal(wide.features[0].weight[:16], narrow.features[0].weight)
    assert wide.features[0].weight[16:].abs().sum() > 0  # the new channels: their random initialisation
    assert not wide.dist.weight[:, 16:].any() and not wide.prob.weight[:, 16:].any()


class _CellReadsItsPixel(torch.nn.Module):
    """A grid-2 "network" whose cell (i, j) outputs the input at pixel (2i, 2j): it shows which image
    point each cell predicts from."""

    grid_stem, n_rays = 2, 8
    config = {"n_rays": 8, "stem": 2}

    def size_multiple(self):
        return (16, 16)

    def forward(self, x):
        cells = x[..., ::2, ::2]
        maps = torch.cat([cells, torch.zeros_like(cells).expand(-1, self.n_rays, -1, -1)], dim=1)
        return network.StarDistNet.to_full_resolution(maps, 2)


@pytest.mark.parametrize("shape", [(48, 40), (47, 41), (32, 45)])
def test_test_time_augmentation_of_a_grid_2_network_reads_every_view_at_the_same_point(shape):
    from ijtorch.models.stardist.model import StarDistModel

    model = StarDistModel(_CellReadsItsPixel(), {"thresholds": {"prob": 0.5, "nms": 0.3}}, device="cpu")
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    prob, _ = model.predict_maps(img, normalize=False, test_time_augmentation=True)
    # each of the 8 flipped/rotated views must predict pixel (2i, 2j) from that pixel, not a neighbour
    np.testing.assert_allclose(prob[::2, ::2], 1 / (1 + np.exp(-img[::2, ::2])), rtol=1e-5)
