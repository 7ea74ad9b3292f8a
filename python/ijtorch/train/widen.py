"""Start a wider network from a narrower one's weights, computing the same function (Net2Net-style).

A wider star-convex network (say 32 base channels instead of 16) trained from scratch needs many
CPU hours to catch up with a narrow one that has had many; started from the narrow one's weights it
begins where that one stands and only has to learn what the extra channels add. Each wider tensor
gets the old tensor in the places of the old channels, and a zero wherever an old output channel
would read a new input channel, so the old channels compute exactly what they did (new channels keep
their random initialisation and start contributing as training moves those zeros). The one place
where the old channels are not the first ones is the input of a U-Net decoder block, the
concatenation ``[upsampled, skip]``: there old channel ``c + j`` (skip ``j``) becomes ``c' + j``.

Hand-written because no library here widens a trained torch network (Net2Net's own code is for
TensorFlow 0.x and Chainer).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["widen_into"]

#: The first convolution of a U-Net decoder block reads ``cat([upsampled, skip])``.
_CONCAT_INPUT = re.compile(r"(^|\.)decoders\.\d+\.0\.weight$")


def _index(old: int, new: int, concat: bool) -> Any:
    """Where the ``old`` entries of one axis go among ``new``."""
    import torch

    if not concat:
        return torch.arange(old)
    half_old, half_new = old // 2, new // 2
    return torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)])


def widen_into(net: Any, source: dict[str, Any]) -> tuple[int, int]:
    """Copy ``source`` (a narrower network's state dict) into ``net`` in place.

    Tensors of equal shape are copied; tensors larger on some axes get the old values at the old
    channels' places and zeros where an old output channel meets a new input channel (weights of
    ``Conv``: output axis 0, input axis 1; of ``ConvTranspose``: the other way round). Tensors that
    are smaller, of other rank, or absent are left as initialised. Returns (copied, widened).
    """
    import torch
    from torch import nn

    transposed = {name + ".weight" for name, m in net.named_modules()
                  if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))}
    state = net.state_dict()
    copied = widened = 0
    with torch.no_grad():
        for key, target in state.items():
            old = source.get(key)
            if old is None or old.dim() != target.dim() or any(o > t for o, t in zip(old.shape, target.shape)):
                continue
            old = old.to(target.dtype)
            if tuple(old.shape) == tuple(target.shape):
                target.copy_(old)
                copied += 1
                continue
            places = [_index(o, t, concat=axis == (0 if key in transposed else 1) and bool(_CONCAT_INPUT.search(key)))
                      for axis, (o, t) in enumerate(zip(old.shape, target.shape))]
            if target.dim() >= 2:  # old outputs must not read new inputs: zero their rows, then put old back
                out_axis = 1 if key in transposed else 0
                target.index_fill_(out_axis, places[out_axis], 0)
            target[torch.meshgrid(*places, indexing="ij")] = old
            widened += 1
    return copied, widened
