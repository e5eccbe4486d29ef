"""The ``sam_cls`` method's config section."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section
from sam_distill.methods.sections import PseudoLabelConfig


class SamClsConfig(Section):
    """SAM-cls: SAM's everything-mode masks on the encoder, each labelled by a classifier (or dropped as background)."""

    classifier: Literal["pooled", "clip"] = Field(
        "pooled", description="pooled: an MLP trained on mask-pooled encoder features; clip: zero-shot CLIP")
    everything: PseudoLabelConfig = Field(PseudoLabelConfig(), description="SamAutomaticMaskGenerator settings")
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="pooled: a proposal takes the class of a ground-truth "
                             "mask it overlaps this much (mask IoU), else it is background")
    geometry: bool = Field(True, description="pooled: add area/box shape to the pooled features")
    hidden: int = Field(256, ge=8, description="pooled: hidden width of the MLP")
    clip_checkpoint: Optional[Path] = Field(None, description="clip: local open_clip weights of clip_model")
    clip_model: str = Field("ViT-B-32", description="clip: open_clip architecture name")
    clip_config: Optional[Path] = Field(None, description="clip: architecture JSON of a custom open_clip model")
    templates: list[str] = Field(["a satellite photo of a {}.", "a photo of a {}."], min_length=1,
                                 description="clip: prompt templates, '{}' becomes the class name")
    background: list[str] = Field(["background"], description="clip: names of what is no class (masks dropped)")
