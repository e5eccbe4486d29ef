"""The ``fastsam`` method's config section."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section
from sam_distill.methods.sections import PseudoLabelConfig


class FastSAMConfig(Section):
    """The FastSAM recipe: teacher pseudo-labels -> YOLO-seg trained by ultralytics -> AP -> export."""

    pseudo_label: PseudoLabelConfig = PseudoLabelConfig()
    ground_truth: Optional[Path] = Field(None, description="COCO instance file for data.images: also report AP on it")
    train_on: Literal["pseudo_labels", "ground_truth"] = "pseudo_labels"
    variant: str = Field("yolov8s-seg", description="yolov8{n,s,m,l,x}-seg, yolo11{n,s,m,l,x}-seg or a local .pt")
    epochs: int = Field(100, ge=1)
    imgsz: int = Field(1024, ge=32)
    batch: int = Field(8, ge=1)
    workers: int = Field(2, ge=0)
    patience: int = Field(100, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_area: float = Field(16, ge=0, description="masks whose polygon encloses fewer pixels are dropped")
    max_components: int = Field(8, ge=1, description="masks in more pieces are dropped as speckle")
    eval_conf: float = Field(0.01, gt=0.0, le=1.0)
    export: list[str] = Field(["onnx"], description="ultralytics export formats (onnx, coreml, ...)")
