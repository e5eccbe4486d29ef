"""RSPrompter's feature aggregator: tap intermediate encoder layers, reduce each with light convolutions,
and fuse them with residual connections into one dense map on SAM's embedding grid (S/16).

``encoder_taps`` is the one place that knows where each encoder family keeps its intermediate features:
SAM ViT ``blocks[i]`` (B×H×W×C), TinyViT ``layers[i]`` (B×N×C token sequences) and timm students'
``backbone`` (a list of B×C×H×W maps, features_only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from sam_distill.core.errors import DistillError


@dataclass
class Tap:
    """One hook point: the module whose output is read, which element of a list output, and its layout."""

    module: nn.Module
    layout: str  # "nhwc" (SAM ViT), "tokens" (TinyViT), "nchw" (timm features_only)
    element: int | None = None

    def to_map(self, output) -> torch.Tensor:
        if self.element is not None:
            output = output[self.element]
        if self.layout == "nhwc":
            return output.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            batch, tokens, channels = output.shape
            side = math.isqrt(tokens)  # inputs are padded squares, so every stage is square
            return output.transpose(1, 2).reshape(batch, channels, side, side)
        return output


def encoder_taps(encoder: nn.Module, indices: list[int] | None = None) -> list[Tap]:
    """The hook points of an encoder; ``indices`` picks ViT blocks / TinyViT stages / timm feature levels
    (default: RSPrompter's every-few-blocks for ViTs, every stage otherwise)."""
    if hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed"):  # segment-anything ImageEncoderViT
        modules, layout = list(encoder.blocks), "nhwc"
        step = max(1, len(modules) // 4)
        default = list(range(step - 1, len(modules), step))
    elif hasattr(encoder, "layers") and hasattr(encoder, "neck"):  # TinyViT
        modules, layout = list(encoder.layers), "tokens"
        default = list(range(len(modules)))
    elif hasattr(encoder, "backbone") and hasattr(encoder.backbone, "feature_info"):  # timm student
        count = len(encoder.backbone.feature_info.channels())
        modules, layout = [encoder.backbone] * count, "nchw"
        default = list(range(count))
    else:
        raise DistillError(f"encoder {type(encoder).__name__} has no known feature taps (SAM ViT, TinyViT or timm student)")
    indices = default if indices is None else sorted(indices)
    bad = [i for i in indices if not -len(modules) <= i < len(modules)]
    if bad or not indices:
        raise DistillError(f"prompter taps {indices} do not fit an encoder with {len(modules)} tap points; "
                           f"use indices 0..{len(modules) - 1}")
    return [Tap(modules[i], layout, i if layout == "nchw" else None) for i in indices]


class TappedEncoder(nn.Module):
    """Runs the encoder once and returns its embedding together with the tapped feature maps."""

    def __init__(self, encoder: nn.Module, indices: list[int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.taps = encoder_taps(encoder, indices)
        size = int(encoder.img_size)
        with torch.no_grad():
            _, maps = self.forward(torch.zeros(1, 3, size, size))
        self.channels = [m.shape[1] for m in maps]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        handles = [tap.module.register_forward_hook(lambda _m, _i, out, tap=tap: captured.append(tap.to_map(out)))
                   for tap in self.taps]
        try:
            embedding = self.encoder(images)
        finally:
            for handle in handles:
                handle.remove()
        return embedding, captured


def conv_block(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         nn.GroupNorm(8 if out_channels % 8 == 0 else 1, out_channels), nn.ReLU(inplace=True))


class Aggregator(nn.Module):
    """Per tap 1×1 reduce → 3×3 conv, resized to the embedding grid, summed level by level with a
    residual 3×3 fusion after each addition (RSPrompter's aggregator)."""

    def __init__(self, in_channels: list[int], grid: int, width: int = 128):
        super().__init__()
        self.grid = grid
        self.reduce = nn.ModuleList(nn.Sequential(conv_block(c, width, 1), conv_block(width, width, 3))
                                    for c in in_channels)
        self.fuse = nn.ModuleList(nn.Sequential(conv_block(width, width, 3), nn.Conv2d(width, width, 3, padding=1))
                                  for _ in in_channels)
        self.out = conv_block(width, width, 3)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        fused = None
        for feature, reduce, fuse in zip(maps, self.reduce, self.fuse):
            feature = reduce(feature)
            if feature.shape[-1] != self.grid or feature.shape[-2] != self.grid:
                feature = F.interpolate(feature, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            fused = feature if fused is None else fused + feature
            fused = fused + fuse(fused)
        return self.out(fused)
