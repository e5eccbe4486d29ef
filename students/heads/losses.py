"""Mask losses and pairwise mask costs shared by both prompters (Mask2Former / RSPrompter style)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Binary n×H×W masks → float n×size×size on SAM's low-res logit grid (area-averaged, then thresholded)."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, size, size), dtype=torch.float32)
    return (F.interpolate(masks[:, None].float(), size=(size, size), mode="area")[:, 0] > 0.5).float()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Soft Dice of each row's mask (+1 smoothing); ``reduction="none"`` keeps one value per row."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    per_mask = 1 - (numerator + 1) / (denominator + 1)
    return per_mask if reduction == "none" else per_mask.mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.flatten(1), targets.flatten(1))


def pairwise_mask_costs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE and Dice cost of every prediction (rows) against every target (columns)."""
    logits, targets = logits.flatten(1).float(), targets.flatten(1).float()
    pixels = logits.shape[1]
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    bce = (positive @ targets.T + negative @ (1 - targets).T) / pixels
    probs = logits.sigmoid()
    dice = 1 - (2 * probs @ targets.T + 1) / (probs.sum(-1)[:, None] + targets.sum(-1)[None] + 1)
    return bce, dice
