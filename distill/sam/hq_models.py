"""HQ-SAM (SysCV's segment-anything-hq package): its ``Sam`` with ``MaskDecoderHQ``, built from that package's
classes and loaded safely here (its own builders call ``torch.load`` without ``weights_only``).

HQ-SAM's decoder takes two things from the image encoder: the image embedding, and the "early" ViT feature (the
output of the first global-attention block, B×H/16×W/16×C, C the ViT's width: 768, 1024 or 1280) that it fuses
into its high-quality output token's mask features. ``image_features`` returns both, as the cache stores them
(``image_embed`` 256×64×64 and ``interm_embed_0`` C×64×64 at 1024 px).

A student for HQ-SAM is one of our encoders with a small head that also produces that early feature, in the
teacher's width (``HqStudentEncoder``); assembled with the teacher's prompt encoder and HQ decoder it is a
segment-anything-hq ``Sam`` that the package's ``SamPredictor`` runs unchanged. Its file is ours
(``{"format": "sam-distill/hq-model/1", "student", "vit_dim", "image_size", "state_dict", "meta"}``, plain
tensors): the student encoder is not one of the package's, so ``load_hq_file`` rebuilds it by name.
"""
from __future__ import annotations

import copy
import zipfile
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.sam.checkpoint import read_state_dict

MODEL_FORMAT = "sam-distill/hq-model/1"
PROMPT_EMBED_DIM = 256
# HQ-SAM's ViT encoders (as segment-anything-hq builds them), plus a 4-block one for tests and offline smoke runs.
HQ_VITS = {
    "hq_vit_h": (1280, 32, 16, (7, 15, 23, 31)),
    "hq_vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "hq_vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "hq_vit_nano": (192, 4, 3, (1, 3)),
}
# Light HQ-SAM: MobileSAM's TinyViT-5M with the HQ decoder (its early feature is TinyViT's second stage, 160-d);
# segment-anything-hq's TinyViT is written for 1024-px inputs only.
LIGHT_HQ = "hq_vit_tiny"
LIGHT_HQ_DIM = 160
HQ_ARCHITECTURES = (*HQ_VITS, LIGHT_HQ)


def require_hq():
    try:
        import segment_anything_hq  # noqa: F401
    except ImportError:
        raise DistillError("HQ-SAM teachers need the segment-anything-hq package: "
                           "pip install 'sam-distill[hq]'") from None


def is_hq_arch(arch: str) -> bool:
    return arch in HQ_ARCHITECTURES


def hq_sam(image_encoder: nn.Module, vit_dim: int, image_size: int) -> nn.Module:
    """segment-anything-hq's ``Sam`` around an image encoder that returns (embedding, [early feature])."""
    require_hq()
    from segment_anything_hq.modeling import MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    grid = image_size // 16
    return Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_EMBED_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoderHQ(num_multimask_outputs=3, transformer=TwoWayTransformer(
            depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8), transformer_dim=PROMPT_EMBED_DIM,
            iou_head_depth=3, iou_head_hidden_dim=256, vit_dim=vit_dim),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def light_hq_encoder() -> nn.Module:
    """Light HQ-SAM's image encoder: segment-anything-hq's TinyViT as its ``build_sam_vit_t`` makes it (which we do
    not call: given a file it loads it unsafely)."""
    from segment_anything_hq.modeling import TinyViT

    return TinyViT(img_size=1024, in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                   num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                   drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                   layer_lr_decay=0.8)


def build_hq_model(arch: str, image_size: int = 1024, seed: int | None = None) -> nn.Module:
    """A random-initialised HQ-SAM of one of HQ-SAM's ViT sizes (or the test one) at ``image_size``, or Light HQ-SAM
    (1024 px only)."""
    require_hq()
    from segment_anything_hq.modeling import ImageEncoderViT

    if arch not in HQ_ARCHITECTURES:
        raise DistillError(f"unknown HQ-SAM architecture {arch!r}; choose one of: {', '.join(HQ_ARCHITECTURES)}")
    if seed is not None:
        torch.manual_seed(seed)
    if arch == LIGHT_HQ:
        if image_size != 1024:
            raise DistillError(f"Light HQ-SAM ({LIGHT_HQ}) takes 1024-px inputs only (segment-anything-hq's TinyViT "
                               f"is written for them); image_size is {image_size}: set it to 1024")
        return hq_sam(light_hq_encoder(), LIGHT_HQ_DIM, 1024)
    width, depth, heads, global_blocks = HQ_VITS[arch]
    encoder = ImageEncoderViT(depth=depth, embed_dim=width, img_size=image_size, mlp_ratio=4,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads, patch_size=16,
                              qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_blocks, window_size=14,
                              out_chans=PROMPT_EMBED_DIM)
    return hq_sam(encoder, width, image_size)


def is_hq_state_dict(state_dict: dict) -> bool:
    return "mask_decoder.hf_token.weight" in state_dict


def detect_hq_arch(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[str, int]:
    """(architecture, image size) of an HQ-SAM state dict: a ViT one, or Light HQ-SAM's TinyViT."""
    if "image_encoder.patch_embed.seq.0.c.weight" in state_dict:  # TinyViT's convolutional stem
        return LIGHT_HQ, 1024
    qkv = state_dict.get("image_encoder.blocks.0.attn.qkv.weight")
    if qkv is None:
        raise DistillError(f"checkpoint {path} is an HQ-SAM whose encoder is neither a ViT nor Light HQ-SAM's TinyViT")
    depth = len({key.split(".")[2] for key in state_dict if key.startswith("image_encoder.blocks.")})
    for arch, (width, blocks, _, _) in HQ_VITS.items():
        if width == qkv.shape[1] and blocks == depth:
            return arch, state_dict["image_encoder.pos_embed"].shape[1] * 16
    raise DistillError(f"checkpoint {path} holds an HQ-SAM ViT of width {qkv.shape[1]} and depth {depth}, "
                       "none of HQ-SAM's")


def _load_strict(model: nn.Module, state_dict: dict, path: Path, what: str) -> nn.Module:
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DistillError(f"checkpoint {path} does not fit {what}: {len(result.missing_keys)} missing keys "
                           f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
                           f"(e.g. {result.unexpected_keys[:2]})")
    return model.eval()


def file_holds_hq(path: Path) -> bool:
    """Whether a checkpoint file is an HQ-SAM (official or ours); False for anything else, unreadable included."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file is simply not an HQ-SAM; its own loader says what is wrong with it
        return False
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        return True
    return isinstance(payload, dict) and is_hq_state_dict(payload)


def load_hq_file(path: Path) -> tuple[nn.Module, str]:
    """(segment-anything-hq ``Sam``, architecture or student name) of an official HQ-SAM file or one of ours."""
    path = Path(path)
    # memory-mapped (zip files): an official file (2.5 GB for HQ ViT-H) is then read once, by read_state_dict below
    payload = torch.load(path, map_location="cpu", weights_only=True,
                         mmap=zipfile.is_zipfile(path)) if path.is_file() else None
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        encoder = HqStudentEncoder(payload["student"], payload["vit_dim"], payload["image_size"])
        model = hq_sam(encoder, payload["vit_dim"], payload["image_size"])
        return _load_strict(model, payload["state_dict"], path, f"HQ-SAM student {payload['student']}"), \
            payload["student"]
    del payload
    state_dict = read_state_dict(path)
    if not is_hq_state_dict(state_dict):
        raise DistillError(f"checkpoint {path} is not an HQ-SAM checkpoint (no HQ output token in its decoder)")
    arch, image_size = detect_hq_arch(state_dict, path)
    return _load_strict(build_hq_model(arch, image_size), state_dict, path, f"HQ-SAM {arch}"), arch


def image_features(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What segment-anything-hq's ``SamPredictor.set_torch_image`` keeps: the embedding and the early ViT feature
    (stored channels-first, as ``interm_embed_0``)."""
    embedding, interm = model.image_encoder(pixels)
    return {"image_embed": embedding, "interm_embed_0": interm[0].permute(0, 3, 1, 2)}


def decode_features(model: nn.Module, features: dict[str, torch.Tensor], points=None, boxes=None,
                    multimask: bool = False, hq_token_only: bool = False):
    """HQ-SAM's prompt encoder and HQ decoder on one image's features for n prompts (model-input coordinates), as
    its predictor runs them: the SAM mask plus the HQ mask (``hq_token_only`` for the HQ mask alone)."""
    sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
    return run_decoder(model.prompt_encoder, model.mask_decoder, features, sparse, dense, multimask, hq_token_only)


def run_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module, features: dict[str, torch.Tensor],
                sparse: torch.Tensor, dense: torch.Tensor, multimask: bool, hq_token_only: bool = False):
    """The HQ decoder on one image's features (``image_embed``, ``interm_embed_0`` channels-first) for n prompt
    embeddings: SAM's mask plus the HQ one (``hq_token_only``: the HQ mask alone), and the IoU."""
    return mask_decoder(image_embeddings=features["image_embed"], image_pe=prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
                        hq_token_only=hq_token_only,
                        interm_embeddings=[features["interm_embed_0"].permute(0, 2, 3, 1)])


class HqStudentEncoder(nn.Module):
    """One of our student encoders plus a head that predicts the teacher's early ViT feature from the student's
    embedding (3×3 conv, GELU, 1×1 conv to the teacher's width): returns (embedding, [feature B×H×W×C]) as
    HQ-SAM's encoders do, so segment-anything-hq's ``Sam`` and ``SamPredictor`` run it unchanged."""

    def __init__(self, student: str, vit_dim: int, image_size: int):
        super().__init__()
        from sam_distill.students import create_student

        self.student = create_student(student, image_size=image_size)
        self.early_feature = nn.Sequential(nn.Conv2d(PROMPT_EMBED_DIM, PROMPT_EMBED_DIM, 3, padding=1), nn.GELU(),
                                           nn.Conv2d(PROMPT_EMBED_DIM, vit_dim, 1))
        self.img_size = image_size

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        embedding = self.student(pixels)
        return embedding, [self.early_feature(embedding).permute(0, 2, 3, 1)]


class HqStudent(nn.Module):
    """The encoder being distilled, returning the cache's outputs by name (one loss on each)."""

    def __init__(self, encoder: HqStudentEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding, interm = self.encoder(pixels)
        return {"image_embed": embedding, "interm_embed_0": interm[0].permute(0, 3, 1, 2)}


def build_student(name: str, teacher: nn.Module) -> HqStudent:
    vit_dim = teacher.mask_decoder.compress_vit_feat[0].weight.shape[0]
    return HqStudent(HqStudentEncoder(name, vit_dim, int(teacher.image_encoder.img_size)))


def assemble_student(student: HqStudent, teacher: nn.Module) -> nn.Module:
    """The student encoder with copies of the teacher's prompt encoder and HQ decoder."""
    encoder = copy.deepcopy(student.encoder).cpu().eval()
    model = hq_sam(encoder, teacher.mask_decoder.compress_vit_feat[0].weight.shape[0], encoder.img_size)
    model.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    model.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    return model.eval()


def save_hq_model(model: nn.Module, student: str, path: Path, meta: dict | None = None) -> Path:
    from sam_distill.core.fileio import atomic_torch_save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_torch_save({"format": MODEL_FORMAT, "student": student, "image_size": int(model.image_encoder.img_size),
                       "vit_dim": int(model.mask_decoder.compress_vit_feat[0].weight.shape[0]),
                       "state_dict": state, "meta": meta or {}}, path)
    return path
