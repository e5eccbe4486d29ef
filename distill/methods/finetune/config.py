"""The ``finetune`` method's config section."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from sam_distill.core.config import Section


class FineTuneConfig(Section):
    """Promptable training of a SAM on ground-truth instance masks, with prompts sampled as SAM was trained."""

    train_encoder: Literal["frozen", "lora", "full"] = Field(
        "lora", description="frozen; lora: low-rank adapters on the attention projections; full (from random init)")
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(8.0, gt=0, description="the update is scaled by lora_alpha / lora_rank")
    lora_targets: list[str] = Field(["attn.qkv", "attn.proj"], min_length=1,
                                    description="linear layers (name suffixes) of the encoder that get adapters")
    train_prompt_encoder: bool = True
    train_decoder: Literal[True, False, "iou_head"] = Field(
        True, description="true: the whole mask decoder; iou_head: only its IoU prediction head, the scores that "
        "pick one click's answer among its three masks and filter everything mode's masks, while every mask stays "
        "exactly as it is (a score recalibration of a fine-tuned or distilled SAM; with box_probability 0 and "
        "max_points 1 it learns on one-click prompts only); false: frozen")
    masks_per_image: int = Field(8, ge=1, description="instances of an image prompted per step (a random subset)")
    box_probability: float = Field(0.5, ge=0.0, le=1.0,
                                   description="chance that an image's first prompts are boxes, else points")
    max_points: int = Field(1, ge=1, description="positive points of a first point prompt: 1..max_points per step; "
                            "one point gets SAM's three masks, the best one trained")
    box_noise: float = Field(0.1, ge=0.0, description="box jitter: std of each coordinate, as a fraction of the side")
    box_noise_max: float = Field(20.0, ge=0.0, description="box jitter: the std's cap, in input pixels")
    correction_rounds: int = Field(2, ge=0, description="corrective clicks from the error region, the previous "
                                   "low-res logits fed back as the mask prompt")
    focal_weight: float = Field(20.0, ge=0.0, description="SAM's mask loss is focal : dice = 20 : 1")
    dice_weight: float = Field(1.0, ge=0.0)
    iou_weight: float = Field(1.0, ge=0.0, description="MSE of the predicted IoU against the true IoU")
    loss_at: Literal["low_res", "input"] = Field(
        "low_res", description="low_res: the loss on SAM's low-res logit grid (a quarter of the input); input: on "
        "the logits upsampled to the input as SamPredictor upsamples them (finer outlines of objects a few grid "
        "cells wide, at a larger loss cost)")
    eval_clicks: int = Field(3, ge=1, description="corrective clicks of the validation mIoU protocol")
