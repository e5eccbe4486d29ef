"""The ``sam_det`` and ``sam_seg`` methods' config sections."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section


class DetectorBaselineConfig(Section):
    """What SAM-seg and SAM-det share: the simple feature pyramid built from the SAM map."""

    width: int = Field(256, ge=32, multiple_of=32, description="feature pyramid channels")
    detections_per_image: int = Field(100, ge=1)


class SamSegConfig(DetectorBaselineConfig):
    """SAM-seg: torchvision's Mask R-CNN head, or a Mask2Former head (the paper's two), on the pyramid."""

    head: Literal["maskrcnn", "mask2former"] = Field("maskrcnn", description="maskrcnn or mask2former")
    num_queries: int = Field(100, ge=1, description="mask2former: queries (Mask2Former's 100)")
    decoder_layers: int = Field(6, ge=1, description="mask2former: masked-attention layers (the authors': 6)")
    pixel_decoder: Literal["deformable", "pyramid"] = Field(
        "deformable", description="mask2former: multi-scale deformable-attention pixel decoder, or the pyramid")
    pixel_decoder_layers: int = Field(3, ge=1, description="mask2former: deformable-attention layers (3)")


class SamDetConfig(DetectorBaselineConfig):
    """SAM-det: a detector's boxes become SAM box prompts and SAM's masks the instance masks."""

    detector: Literal["faster_rcnn", "coco_results"] = Field(
        "faster_rcnn", description="faster_rcnn: trained here on the SAM map; coco_results: given detections")
    detections: Optional[Path] = Field(None, description="coco_results: a COCO results json (image_id, "
                                       "category_id, bbox, score) for instances.annotations' images")
    train_decoder: bool = Field(False, description="faster_rcnn: also fine-tune SAM's mask decoder on the "
                                "ground-truth boxes (for domains far from SA-1B; the paper keeps SAM frozen)")
