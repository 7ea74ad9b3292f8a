"""A tiny deterministic star-convex model for server tests (no training: seeded weights whose
probability head is rescaled so that about 3 % of the pixels of a DSB nuclei image exceed 0.5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The image the head is calibrated on (relative to the shared data folder).
CALIBRATION_IMAGE = Path("nuclei_dsb2018") / "train" / "images" / "0402a81e75262469.tif"


def make_tiny_model(folder: Path, image: np.ndarray, *, name: str = "tiny") -> Path:
    """Save the model as ``folder/name`` and return its path."""
    import torch

    from ijtorch.models.stardist import network
    from ijtorch.models.stardist.model import StarDistModel

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    net = network.StarDistNet(16, 1, base_channels=8, depth=2, head_channels=8)
    torch.random.set_rng_state(gen_state)
    model = StarDistModel(net, {"name": name, "thresholds": {"prob": 0.5, "nms": 0.4}}, device="cpu")
    prob, _ = model.predict_maps(image)
    logit = np.log(prob / (1 - prob))
    shift, scale = float(np.percentile(logit, 97)), 4.0 / float(logit.std())
    with torch.no_grad():
        net.prob.weight.mul_(scale)
        net.prob.bias.copy_((net.prob.bias - shift) * scale)
    return model.save(Path(folder) / name)
