"""The blind-spot network never sees the pixel it predicts; the noise model is read off the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from ijtorch.models.blindspot import BlindSpotNet, blindspot_loss, estimate_noise_model

torch.set_num_threads(1)


@pytest.mark.parametrize("shape", [(32, 32), (32, 48)])
def test_prior_does_not_depend_on_the_pixel_it_predicts(shape):
    torch.manual_seed(0)
    net = BlindSpotNet(base_channels=4, depth=2)
    x = torch.randn(1, 1, *shape, requires_grad=True)
    mu = net.prior(x)
    assert mu.shape == x.shape
    for y, xx in ((10, 12), (0, 0), (shape[0] - 1, shape[1] - 1)):
        x.grad = None
        mu[0, 0, y, xx].backward(retain_graph=True)
        g = x.grad[0, 0].abs()
        assert g[y, xx] == 0, "the blind spot leaks its own pixel"
        assert (g > 0).sum() > 0.5 * g.numel(), "the prior should see most of the surroundings"


def test_posterior_mean_moves_from_the_prior_towards_the_noisy_pixel():
    torch.manual_seed(0)
    net = BlindSpotNet(base_channels=4, depth=2).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        mu = net.prior(x)
        assert torch.allclose(net(x), mu)  # no noise model: the prior mean
        net.set_noise(0.0, 1e9)  # hopeless noise: the prior alone
        assert torch.allclose(net(x), mu, atol=1e-5)
        net.set_noise(0.0, 0.0, 0.0)  # no noise (the variance floor of 1e-6): the pixel itself
        assert torch.allclose(net(x), x, atol=1e-3) and not torch.allclose(mu, x, atol=0.1)


def test_loss_trains_and_is_finite():
    torch.manual_seed(0)
    net = BlindSpotNet(base_channels=4, depth=2)
    x = torch.rand(2, 1, 16, 16)
    loss = blindspot_loss(net, (x,))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert loss.item() == pytest.approx(((net.prior(x) - x) ** 2).mean().item(), rel=1e-5)


def test_posterior_mean_with_the_local_prior_variance_beats_the_prior_mean():
    """Where the prior mean is off by a smooth error, the residual shows it and the posterior trusts
    the (less noisy) pixels more; where it is right, it keeps the prior."""
    from ijtorch.models import blindspot

    rng = np.random.default_rng(1)
    clean = torch.from_numpy(ndi.gaussian_filter(rng.random((64, 64)), 4) * 4).float()[None, None]
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    good, bad = clean.clone(), clean.clone()
    bad[..., :, 32:] += 0.3  # the prior is 0.3 off on the right half

    class Fixed(BlindSpotNet):
        prior_value = good

        def prior(self, x):
            return self.prior_value

    net = Fixed(base_channels=2, depth=1)
    net.set_noise(0.0, 0.05 ** 2)
    with torch.no_grad():
        kept = net(noisy)
        net.prior_value = bad
        fixed = net(noisy)
    assert torch.mean((kept - clean) ** 2) < 0.2 * 0.05 ** 2  # a good prior is kept (the noise is not let back)
    err_bad, err_fixed = (bad - clean)[..., 40:] ** 2, (fixed - clean)[..., 40:] ** 2
    assert err_fixed.mean() < 0.1 * err_bad.mean()  # a bad prior gives way to the pixels
    assert blindspot._PRIOR_SIGMA > 1


def test_noise_model_of_poisson_gaussian_noise():
    rng = np.random.default_rng(0)
    clean = ndi.gaussian_filter(rng.random((256, 256)), 6)
    clean = (clean - clean.min()) / np.ptp(clean)
    noisy = rng.poisson(clean * 20) / 20 + rng.normal(0, 0.05, clean.shape)
    a, b, floor = estimate_noise_model(noisy)
    assert a == pytest.approx(1 / 20, rel=0.2) and b == pytest.approx(0.0025, abs=0.0015)
    assert 0 < floor < a * clean.mean() + b
    a, b, _ = estimate_noise_model(clean + rng.normal(0, 0.1, clean.shape))  # Gaussian only
    assert abs(a) < 0.01 and b == pytest.approx(0.01, rel=0.2)
    with pytest.raises(ValueError, match="2D image"):
        estimate_noise_model(np.zeros((4, 4)))
