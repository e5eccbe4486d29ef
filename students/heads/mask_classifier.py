"""SAM-cls's light classifier: an MLP over the SAM image embedding averaged inside each mask.

The everything-mode masks already say *where* objects are; the encoder's 256-d embedding averaged over a
mask says *what* is there, so a small MLP on it (plus four shape numbers, which tell e.g. a long bridge
from a round tank) is enough to label masks, and training it costs seconds because the encoder stays
frozen and the features are computed once. Output 0 is "background" (a proposal that matches no object).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import masks_to_boxes

EMBEDDING_DIM = 256
GEOMETRY_DIM = 4


def pooled_features(embedding: torch.Tensor, masks: torch.Tensor, input_size: tuple[int, int],
                    geometry: bool = True) -> torch.Tensor:
    """Mask-average-pooled embedding (N×256, plus N×4 shape numbers when ``geometry``).

    ``embedding`` is one image's 256×G×G SAM embedding; ``masks`` N×S×S (bool or [0, 1]) on the padded S×S
    model-input frame, of which the top-left ``input_size`` (h, w) is image. Each mask is area-averaged down to
    the G×G grid, so a cell counts by how much of it the mask covers."""
    if len(masks) == 0:
        return embedding.new_zeros(0, EMBEDDING_DIM + GEOMETRY_DIM * geometry)
    grid = embedding.shape[-1]
    masks = masks.float().to(embedding.device)
    weights = F.adaptive_avg_pool2d(masks[:, None], grid)[:, 0].flatten(1)  # N×G²
    pooled = weights @ embedding.flatten(1).T / weights.sum(1, keepdim=True).clamp_min(1e-6)
    if not geometry:
        return pooled
    height, width = input_size
    boxes = _safe_boxes(masks > 0.5)
    box_w, box_h = (boxes[:, 2] - boxes[:, 0] + 1) / width, (boxes[:, 3] - boxes[:, 1] + 1) / height
    area = (masks > 0.5).flatten(1).sum(1).float() / (height * width)
    fill = area / (box_w * box_h).clamp_min(1e-6)
    shape = torch.stack([area.clamp_min(1e-6).log(), box_w, box_h, fill], dim=1)
    return torch.cat([pooled, shape.to(pooled)], dim=1)


def _safe_boxes(masks: torch.Tensor) -> torch.Tensor:
    """masks_to_boxes that gives empty masks a zero box instead of failing."""
    boxes = torch.zeros(len(masks), 4, device=masks.device)
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        boxes[nonempty] = masks_to_boxes(masks[nonempty]).float()
    return boxes


class MaskClassifier(nn.Module):
    """LayerNorm → Linear → GELU → Linear: logits over background + ``num_classes``. The input norm makes it
    indifferent to the scale of whichever encoder (teacher or student) made the embedding."""

    def __init__(self, num_classes: int, geometry: bool = True, hidden: int = 256):
        super().__init__()
        self.in_dim = EMBEDDING_DIM + GEOMETRY_DIM * geometry
        self.net = nn.Sequential(nn.LayerNorm(self.in_dim), nn.Linear(self.in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_classes + 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
