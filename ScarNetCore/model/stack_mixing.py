"""Through-plane mixing: each slice's features meet those of the slices beside it in the stack.

A 2-D network sees one slice (and, 2.5-D, its two neighbours as input channels). Scar runs on from
slice to slice, so the refine stage may also look at the whole stack: at the coarser levels of the
U-Net each slice's features get a learned combination of the same place in the slices before and
after it (a 3 × 1 × 1 convolution across the stack). Applied at several levels in a row, the reach
grows by one slice per level. Zero-initialised and residual, so a network trained without it
starts out giving exactly its old answer.
"""
from __future__ import annotations

import torch
from torch import nn


class StackMixing(nn.Module):
    def __init__(self, channels: int, reach: int = 1):
        super().__init__()
        # a 2-D convolution over (slice, pixel): 4-D weights, so the model can go channels-last on CPU
        self.conv = nn.Conv2d(channels, channels, (2 * reach + 1, 1), padding=(reach, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, stacks: list[int] | None = None) -> torch.Tensor:
        """x: [B, C, h, w], the slices of consecutive stacks in stack order; stacks: their sizes
        (None: the batch is one stack). Slices beyond a stack's ends count as zero features."""
        parts = x.split(stacks) if stacks is not None else (x,)
        mixed = [self.conv(part.transpose(0, 1).flatten(2)[None])[0].transpose(0, 1).reshape(part.shape)
                 for part in parts]
        return x + torch.cat(mixed)
