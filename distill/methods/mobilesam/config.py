"""The ``mobilesam`` method's own config sections."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from sam_distill.core.config import Section


class StudentConfig(Section):
    name: str = Field("tinyvit_5m", description="SAM and HQ-SAM teachers: tinyvit_5m or timm_<model>; SAM 2 "
                      "teachers: hiera_nano, hiera_micro or timm_<model> (stride 4-32 feature maps)")
    init: Optional[Path] = Field(None, description="start from these encoder weights (our model file or MobileSAM's; "
                                 "only the image encoder is taken, and prompt_stage.train_decoder starts its decoder "
                                 "from the teacher's)")
    output_weights: dict[str, float] = Field(
        {}, description="teachers whose decoder takes more than the embedding: the weight of the MSE on each output "
        "(unnamed ones weigh 1). SAM 2: image_embed, high_res_feats_0, high_res_feats_1; HQ-SAM: image_embed, "
        "interm_embed_0")


class PromptStageConfig(Section):
    """EdgeSAM's prompt-in-the-loop stage: student masks are matched to the teacher's through the frozen decoder."""

    enabled: bool = False
    only: bool = Field(False, description="skip the decoupled stage and run this one from student.init: EdgeSAM's "
                       "second phase as a run of its own, from a student distilled before")
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    prompts_per_image: int = Field(4, ge=1)
    refine_iterations: int = Field(1, ge=0, description="extra points sampled from the disagreement region")
    prompts: Literal["auto", "annotations", "random"] = Field(
        "auto", description="where each round's first prompts come from. annotations: data.annotations' instances "
        "(a point inside one, or its box), as EdgeSAM samples SA-1B's masks, so the stage trains on the objects "
        "users will click; random: points anywhere in the image and the boxes of the teacher's masks for them; "
        "auto: annotations when data.annotations is set, else random")
    multimask: bool = Field(
        True, description="a single-click prompt is also answered with SAM's three multimask outputs (what "
        "SamPredictor returns for one click), each matched to the teacher's, as EdgeSAM distils every mask token; "
        "false: the single-mask output only")
    iou_weight: float = Field(
        0.0, ge=0, description="with multimask: weight of the MSE between the IoU scores the decoder predicts for "
        "the student's three one-click masks and for the teacher's (SamPredictor keeps the best-scored one, so "
        "this teaches the student the teacher's choice); 1 is SAM's weight for its IoU head; 0: off")
    embedding_weight: float = Field(
        0.0, ge=0, description="weight of the decoupled stage's MSE to the teacher's cached outputs, kept during this "
        "stage (EdgeSAM's PIXEL_WISE) so the embedding the frozen decoder reads does not drift; 0: off")
    train_decoder: bool = Field(
        False, description="EdgeSAM's enc_dec: the student trains its own copy of the teacher's mask decoder with "
        "its encoder, and model.pt ships that decoder; false: the teacher's decoder, frozen (SAM teachers only)")
    checkpoint_every: int = Field(200, ge=1)
    num_workers: int = Field(0, ge=0)


class FidelityConfig(Section):
    enabled: bool = True
    points_per_image: int = Field(8, ge=1)
    max_images: Optional[int] = Field(50, ge=1)
