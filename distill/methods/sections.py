"""The config sections several methods read: the teacher and its images, the embedding cache, the training
schedule, the SAM an instance method builds on, COCO instance data, and SAM's everything-mode settings."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator

from sam_distill.core.config import Section


class TeacherConfig(Section):
    """An official name (sam_vit_h, sam_vit_l, sam_vit_b, mobile_sam) or an architecture (vit_b, ...)."""

    name: str = "sam_vit_h"
    checkpoint: Optional[Path] = None
    random_init: bool = Field(False, description="random weights of the architecture: smoke runs only")
    image_size: Optional[int] = Field(None, ge=64, multiple_of=16, description=(
        "the input size: random_init's (1024 if unset); with a checkpoint, the size to run it at (its own if "
        "unset), which only an encoder that takes any input size (a timm ConvNet) can change"))


class SyntheticImages(Section):
    count: int = Field(8, ge=2)
    size: int = Field(512, ge=16)
    seed: int = 0


class DataConfig(Section):
    images: Optional[Path] = None
    max_images: Optional[int] = Field(None, ge=1, description="use only the first N images (sorted by path)")
    annotations: Optional[Path] = Field(None, description="a COCO json naming the images of data.images to use: "
                                        "its file-name-hash split (the instance recipes' own) picks data.split")
    split: Literal["all", "train", "val"] = Field("all", description="with data.annotations: train keeps the "
                                                  "validation images of the instance recipes unseen")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="with data.annotations: the split's fraction")
    synthetic: Optional[SyntheticImages] = None
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_holdout: Optional[int] = Field(200, ge=1)


class CacheConfig(Section):
    dir: Optional[Path] = Field(None, description="default: <run_dir>/cache; share one between runs of one teacher")
    shard_size: int = Field(16, ge=1)
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)
    views: list[Literal["identity", "hflip", "vflip", "rot90", "rot180", "rot270"]] = Field(
        ["identity"], description="each image's copies embedded and trained on: flips and rotations (one teacher "
        "pass each) multiply a small data set; overhead imagery has no up. Always includes identity")

    @field_validator("views")
    @classmethod
    def _identity_first(cls, views: list[str]) -> list[str]:
        """The image itself is always a view (the held-out side scores it), once, first."""
        return list(dict.fromkeys(["identity", *views]))


class TrainConfig(Section):
    epochs: int = Field(8, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(200, ge=0)
    amp: bool = Field(True, description="mixed precision on CUDA (bf16 where supported, else fp16)")
    cpu_bf16: bool = Field(False, description="bf16 autocast on a CPU with native bf16 (AMX or AVX512-BF16): "
                           "3-4x faster convolutions on such CPUs; off by default since it changes the numbers")
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(2, ge=0)


class PseudoLabelConfig(Section):
    """segment-anything's SamAutomaticMaskGenerator settings (its defaults)."""

    points_per_side: int = Field(32, ge=1)
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_n_layers: int = Field(0, ge=0)
    min_mask_region_area: int = Field(0, ge=0)


class EncoderConfig(Section):
    """The SAM the instance recipes (prompter, sam_det, sam_seg, sam_cls) build on: the teacher or a distilled
    student, so every method can be compared on the same encoder."""

    name: str = Field("tinyvit_5m", description="vit_b/vit_l/vit_h/vit_tiny/tinyvit_5m, a student (timm_<model>), a "
                      "SAM 2 (sam2.1_hiera_t, ...) or HQ-SAM (hq_vit_b, ...) architecture: what the checkpoint holds")
    checkpoint: Optional[Path] = Field(None, description="a SAM, SAM 2 or HQ-SAM file (official or a distilled "
                                       "model); else RANDOM weights")
    image_size: int = Field(1024, ge=64, multiple_of=16)
    train: Literal["frozen", "lora", "full"] = Field(
        "frozen", description="frozen (RSPrompter's default), lora (low-rank adapters on the attention projections, "
        "RSPrompter's *-peft-512 configs; merged into plain weights in the saved model) or full; sam_cls: frozen")
    lora_rank: int = Field(16, ge=1, description="encoder.train lora: RSPrompter's PEFT configs use r=16")
    lora_alpha: float = Field(32.0, gt=0, description="the update is scaled by lora_alpha / lora_rank (theirs: 32)")
    lora_targets: list[str] = Field(["attn.qkv"], min_length=1,
                                    description="linear layers adapted (theirs: qkv of every ViT block)")

    @field_validator("train", mode="before")
    @classmethod
    def _from_bool(cls, value):
        """Configs of earlier versions said true/false."""
        return {True: "full", False: "frozen"}.get(value, value) if isinstance(value, bool) else value


class InstanceEvalConfig(Section):
    every: int = Field(100, ge=1, description="validation AP every this many steps (and at the end)")
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    overlays: int = Field(4, ge=0, description="overlay images written of the validation split")
    overlay_score: float = Field(0.3, ge=0.0, le=1.0, description="detections drawn on the overlays: at least this "
                                 "score (lower it early in training, when every score is low)")


class InstancesConfig(Section):
    """COCO instance data shared by the instance recipes: one fixed split, one AP code, one report."""

    annotations: Optional[Path] = Field(None, description="COCO instances json (polygons or RLE)")
    images: Optional[Path] = Field(None, description="folder holding the json's file_name entries")
    synthetic: Optional[SyntheticImages] = Field(None, description="generate shape images with known instances")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fixed split by file-name hash")
    max_train_images: Optional[int] = Field(None, ge=1)
    max_val_images: Optional[int] = Field(None, ge=1)
    augment: bool = True
    flips: Literal["horizontal", "dihedral"] = Field(
        "horizontal", description="training flips when augment is on: horizontal (natural images have an up), or "
        "dihedral, also vertical flips and transposes (overhead imagery has no up; RSPrompter flips both ways)")
    eval: InstanceEvalConfig = InstanceEvalConfig()
