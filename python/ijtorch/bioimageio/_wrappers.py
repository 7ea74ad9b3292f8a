# The exported networks: each wraps one ijtorch network and adds the final activation, so that a
# bioimage.io consumer gets the maps ijtorch post-processes (probabilities, distances, restored
# intensities in normalised units, class probabilities). State-dict keys are ``net.<ijtorch key>``.
#
# This file is inlined into the self-contained architecture source of every exported package
# (ijtorch.bioimageio.architecture); lines ending in "# ARCH-STRIP" are dropped there.
from typing import Any, Dict  # ARCH-STRIP

import torch  # ARCH-STRIP
from torch import nn  # ARCH-STRIP

from ijtorch.models.classifier import ClassifierNet  # ARCH-STRIP
from ijtorch.models.stardist.network import _torch_parts as _sd2  # ARCH-STRIP
from ijtorch.models.stardist.network3d import _torch_parts as _sd3  # ARCH-STRIP
from ijtorch.models.unet import UNet  # ARCH-STRIP

StarDistNet = _sd2()  # ARCH-STRIP
StarDistNet3D = _sd3()  # ARCH-STRIP


class StarDistMaps(nn.Module):
    """2D star-convex maps: channel 0 object probability (sigmoid), channels 1.. ray distances (px)."""

    def __init__(self, architecture: Dict[str, Any]) -> None:
        super().__init__()
        self.net = StarDistNet(**architecture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.cat([torch.sigmoid(out[:, :1]), out[:, 1:]], dim=1)


class StarDist3DMaps(nn.Module):
    """3D star-convex maps on the model's grid: probability (sigmoid) then ray distances (voxels)."""

    def __init__(self, architecture: Dict[str, Any]) -> None:
        super().__init__()
        self.net = StarDistNet3D(**architecture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.cat([torch.sigmoid(out[:, :1]), out[:, 1:]], dim=1)


class ClassProbabilities(nn.Module):
    """U-Net per-pixel class probabilities (softmax over the channel axis)."""

    def __init__(self, architecture: Dict[str, Any]) -> None:
        super().__init__()
        self.net = UNet(**architecture)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


class Restoration(nn.Module):
    """U-Net restoration in normalised units (``residual``: the input is added, as CARE/N2N train)."""

    def __init__(self, architecture: Dict[str, Any], residual: bool = False) -> None:
        super().__init__()
        self.net = UNet(**architecture)
        self.residual = bool(residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.residual:
            out = out + x[:, :1]
        return out


class ClassifierProbabilities(nn.Module):
    """Calibrated class probabilities ``softmax(logits / temperature)``; ``tta``: logits averaged
    over the 8 rotations/reflections in YX."""

    def __init__(self, architecture: Dict[str, Any], temperature: float = 1.0, tta: bool = False) -> None:
        super().__init__()
        self.net = ClassifierNet(**architecture)
        self.temperature = float(temperature)
        self.tta = bool(tta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tta:
            views = []
            for flipped in (x, torch.flip(x, (-1,))):
                views += [torch.rot90(flipped, k, (-2, -1)) for k in range(4)]
            logits = torch.stack([self.net(v) for v in views]).mean(0)
        else:
            logits = self.net(x)
        return torch.softmax(logits / self.temperature, dim=1)


WRAPPERS = {"StarDistMaps": StarDistMaps, "StarDist3DMaps": StarDist3DMaps, "ClassProbabilities": ClassProbabilities,
            "Restoration": Restoration, "ClassifierProbabilities": ClassifierProbabilities}
