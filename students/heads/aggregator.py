"""RSPrompter's feature aggregator: tap intermediate encoder layers, reduce each with light convolutions,
and fuse them with residual connections into one dense map on SAM's embedding grid (S/16), as the authors'
``RSFeatureAggregator`` does: every second ViT block, each reduced to a narrow width (32) by a 1×1 and a 3×3
convolution, summed cumulatively with a residual 3×3 convolution after each addition, then a fusion to 256.

``encoder_taps`` is the one place that knows where each encoder family keeps its intermediate features:
SAM and HQ-SAM ViT ``blocks[i]`` (B×H×W×C), SAM 2's Hiera ``blocks[i]`` (B×H×W×C, at strides 4 to 32),
TinyViT ``layers[i]`` (B×N×C token sequences) and timm students' and trunks' features_only model (a list of
B×C×H×W maps).
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
    """The hook points of an encoder; ``indices`` picks ViT blocks / Hiera blocks / TinyViT stages / timm feature
    levels (default: RSPrompter's every second ViT block, ``range(1, depth, 2)``; the last block of each stage of a
    hierarchical encoder, which has no such rule in the paper, as for TinyViT and timm: every stage)."""
    features_only = getattr(encoder, "backbone", getattr(encoder, "body", None))
    if hasattr(encoder, "blocks") and hasattr(encoder, "stage_ends"):  # sam2 Hiera
        modules, layout = list(encoder.blocks), "nhwc"
        default = list(encoder.stage_ends)
    elif hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed"):  # segment-anything(-hq) ImageEncoderViT
        modules, layout = list(encoder.blocks), "nhwc"
        default = list(range(1, len(modules), 2))
    elif hasattr(encoder, "layers") and hasattr(encoder, "neck"):  # TinyViT
        modules, layout = list(encoder.layers), "tokens"
        default = list(range(len(modules)))
    elif hasattr(features_only, "feature_info"):  # timm student or SAM 2 timm trunk
        count = len(features_only.feature_info.channels())
        modules, layout = [features_only] * count, "nchw"
        default = list(range(count))
    else:
        raise DistillError(f"encoder {type(encoder).__name__} has no known feature taps (SAM ViT, Hiera, TinyViT or "
                           "timm)")
    indices = default if indices is None else sorted(indices)
    bad = [i for i in indices if not -len(modules) <= i < len(modules)]
    if bad or not indices:
        raise DistillError(f"prompter taps {indices} do not fit an encoder with {len(modules)} tap points; "
                           f"use indices 0..{len(modules) - 1}")
    return [Tap(modules[i], layout, i if layout == "nchw" else None) for i in indices]


class TappedEncoder:
    """Runs a SAM's image encoder once (``sam.encode``: any family's parts) and returns its features together with
    the tapped maps. Not a module: the SAM's weights belong to the model that holds the SAM."""

    def __init__(self, sam, indices: list[int] | None = None):
        self.sam = sam
        self.taps = encoder_taps(sam.tap_root, indices)
        size = int(sam.image_size)
        with torch.no_grad():
            _, maps = self(torch.zeros(1, 3, size, size, device=next(sam.parameters()).device))
        self.channels = [m.shape[1] for m in maps]

    def __call__(self, images: torch.Tensor):
        captured: list[torch.Tensor] = []
        handles = [tap.module.register_forward_hook(lambda _m, _i, out, tap=tap: captured.append(tap.to_map(out)))
                   for tap in self.taps]
        try:
            features = self.sam.encode(images)
        finally:
            for handle in handles:
                handle.remove()
        return features, captured


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm as the authors' code has it, or GroupNorm for batches too small for batch statistics."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)
    raise DistillError(f"norm must be batch or group, got {kind!r}")


def conv_block(in_channels: int, out_channels: int, kernel: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
                         norm_layer(norm, out_channels), nn.ReLU(inplace=True))


class Aggregator(nn.Module):
    """Per tap: 1×1 to ``hidden`` → 3×3 (resized to the embedding grid when a tap has another stride); then
    cumulatively ``h = x + h; x = h + conv3×3(h)`` tap by tap; then a fusion 1×1 to ``width`` → 3×3 → 3×3.
    The authors' defaults: hidden 32, width 256, BatchNorm."""

    def __init__(self, in_channels: list[int], grid: int, width: int = 256, hidden: int = 32, norm: str = "batch"):
        super().__init__()
        self.grid = grid
        self.reduce = nn.ModuleList(nn.Sequential(conv_block(c, hidden, 1, norm), conv_block(hidden, hidden, 3, norm))
                                    for c in in_channels)
        self.hidden = nn.ModuleList(conv_block(hidden, hidden, 3, norm) for _ in in_channels)
        self.fusion = nn.Sequential(conv_block(hidden, width, 1, norm), conv_block(width, width, 3, norm),
                                    nn.Conv2d(width, width, 3, padding=1))

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        fused = None
        for feature, reduce, hidden in zip(maps, self.reduce, self.hidden):
            feature = reduce(feature)
            if feature.shape[-1] != self.grid or feature.shape[-2] != self.grid:
                feature = F.interpolate(feature, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            if fused is not None:
                feature = fused + feature
            fused = feature + hidden(feature)
        return self.fusion(fused)
