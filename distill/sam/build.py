"""Building SAM models: SAM's published image encoders, a tiny one for offline smoke runs, and a
segment-anything ``Sam`` around any encoder (students included)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from sam_distill.core.errors import DistillError

PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16
@dataclass(frozen=True)
class ViTArch:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


# SAM's three published image encoders, plus a 4-block one for offline smoke runs (never pretrained).
VIT_ARCHS = {
    "vit_h": ViTArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": ViTArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": ViTArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_tiny": ViTArch(192, 4, 3, (1, 3)),
}
ARCHITECTURES = (*VIT_ARCHS, "tinyvit_5m")


def sam_with_encoder(image_encoder: nn.Module, image_size: int = 1024) -> Sam:
    """A segment-anything ``Sam`` around any encoder, with SAM's own prompt encoder and decoder."""
    embedding_size = image_size // PATCH_SIZE
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam(arch: str, image_size: int = 1024) -> Sam:
    """A randomly initialised SAM of a given architecture (segment-anything's builders at 1024)."""
    if arch in ("vit_h", "vit_l", "vit_b") and image_size == 1024:
        return sam_model_registry[arch]()
    if arch in VIT_ARCHS:
        spec = VIT_ARCHS[arch]
        encoder = ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=14,
            out_chans=PROMPT_EMBED_DIM,
        )
        return sam_with_encoder(encoder, image_size).eval()
    if arch == "tinyvit_5m":
        from sam_distill.students import create_student

        return sam_with_encoder(create_student("tinyvit_5m", image_size=image_size), image_size).eval()
    raise DistillError(f"unknown SAM architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
