"""Multi-scale features from one stride-16 map, as ViTDet builds them for a plain ViT, and a fixed sine position
code: shared by SAM-det/SAM-seg and the anchor prompter (RSPrompter's ``RSSimpleFPN`` and ``extra_pe``)."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32 if channels % 32 == 0 else 1, channels)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid: strides 4 and 8 by transposed convolutions, 16 as is, 32 by max-pooling,
    each projected to ``width`` channels; plus torchvision's extra ``pool`` level (stride 64)."""

    def __init__(self, in_channels: int = 256, width: int = 256):
        super().__init__()
        half, quarter = in_channels // 2, in_channels // 4
        self.rescale = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(in_channels, half, 2, 2), _norm(half), nn.GELU(),
                          nn.ConvTranspose2d(half, quarter, 2, 2)),
            nn.ConvTranspose2d(in_channels, half, 2, 2),
            nn.Identity(),
            nn.MaxPool2d(2),
        ])
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), _norm(width),
                          nn.Conv2d(width, width, 3, padding=1, bias=False), _norm(width))
            for c in (quarter, half, in_channels, in_channels))
        self.out_channels = width

    def forward(self, embedding: torch.Tensor) -> OrderedDict:
        levels = OrderedDict((str(i), project(rescale(embedding)))
                             for i, (rescale, project) in enumerate(zip(self.rescale, self.project)))
        levels["pool"] = F.max_pool2d(levels["3"], 1, 2)
        return levels


def sine_positions(channels: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """DETR's normalised sine position code, 1×C×H×W (C/2 channels for y, then C/2 for x). Added to the pyramid
    before RoI pooling (the authors' ``extra_pe``), it tells a RoI feature where in the image it was cut from:
    the prompts made from it must encode that position for SAM's decoder."""
    half = channels // 2
    frequencies = 10000 ** (2 * (torch.arange(half, device=like.device, dtype=like.dtype) // 2) / half)
    rows = torch.arange(1, height + 1, device=like.device, dtype=like.dtype) / height * 2 * math.pi
    cols = torch.arange(1, width + 1, device=like.device, dtype=like.dtype) / width * 2 * math.pi

    def code(positions: torch.Tensor) -> torch.Tensor:  # n → n×half, sines and cosines interleaved
        angles = positions[:, None] / frequencies
        return torch.stack([angles[:, 0::2].sin(), angles[:, 1::2].cos()], dim=-1).flatten(1)

    y = code(rows)[:, None].expand(height, width, half)
    x = code(cols)[None].expand(height, width, half)
    return torch.cat([y, x], dim=-1).permute(2, 0, 1)[None]
