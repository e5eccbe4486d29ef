"""A complete SAM from a student encoder and the teacher's prompt encoder and mask decoder.

Our checkpoint is one ``torch.save`` of plain data (loads with ``weights_only=True``)::

    {"format": "sam-distill/model", "student": "tinyvit_5m", "image_size": 1024,
     "state_dict": {image_encoder.*, prompt_encoder.*, mask_decoder.*}, "meta": {...}}

``student`` names the encoder: a student (``tinyvit_5m``, ``timm_<model>``) or one of SAM's own ViT
architectures (``vit_b``, ``vit_tiny``, ...: what ``recipe: finetune`` writes), rebuilt by that name on load.
``tinyvit_5m`` models are also written in MobileSAM's own layout (a bare state dict), which
MobileSAM and ``ultralytics.models.sam.build_mobile_sam`` load unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from segment_anything.modeling import Sam

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_torch_save
from sam_distill.sam.build import sam_with_encoder
from sam_distill.sam.checkpoint import read_state_dict, sam_from_state_dict
from sam_distill.students import create_student

MODEL_FORMAT = "sam-distill/model"


@dataclass
class ModelInfo:
    student: str
    image_size: int
    meta: dict = field(default_factory=dict)


def assemble(student: nn.Module, teacher_sam: Sam) -> Sam:
    """Student encoder + copies of the teacher's prompt encoder and mask decoder, as a segment-anything Sam."""
    image_size = int(teacher_sam.image_encoder.img_size)
    model = sam_with_encoder(student, image_size)
    model.prompt_encoder.load_state_dict(teacher_sam.prompt_encoder.state_dict())
    model.mask_decoder.load_state_dict(teacher_sam.mask_decoder.state_dict())
    return model.eval()


def save_model(model: Sam, path: Path, student: str, meta: dict | None = None) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": MODEL_FORMAT, "student": student, "image_size": int(model.image_encoder.img_size),
               "state_dict": state, "meta": meta or {}}
    atomic_torch_save(payload, Path(path))
    return Path(path)


def save_mobilesam_layout(model: Sam, path: Path) -> Path:
    """A bare state dict with MobileSAM's keys: what ``mobile_sam.pt`` is."""
    atomic_torch_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, Path(path))
    return Path(path)


def load_model(path: Path | str, image_size: int | None = None,
               fix: str = "drop --image-size") -> tuple[Sam, ModelInfo]:
    """Load our checkpoint, a MobileSAM file or an official SAM file as a segment-anything Sam.

    ``image_size`` runs the model at another input side than the one it was trained at, which shows small objects
    larger (remote-sensing scenes gain from it, docs/CHAIN.md). Only encoders that take any input size can: the
    timm ConvNet students (``any_input_size``); SAM's ViTs and TinyViT hold weights for their own size, and asking
    one for another ends in one line whose remedy is ``fix`` (``{size}`` is the file's own size), worded for the
    caller's key or flag."""
    path = Path(path)
    if image_size is not None and (image_size <= 0 or image_size % 16):
        raise DistillError(f"--image-size {image_size}: SAM's embedding is a 16-pixel grid; give a positive multiple "
                           f"of 16 (e.g. {max(16, -(-image_size // 16) * 16)})")
    if not path.is_file():
        raise DistillError(f"model {path} does not exist")
    try:  # memory-mapped: an official file (2.5 GB for ViT-H) is then read once, by read_state_dict below
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        payload = None  # read_state_dict below turns the failure into a sentence
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        student = payload["student"]
        trained_size = int(payload["image_size"])
        model = build_sam_for(student, image_size or trained_size)  # a SAM architecture (a fine-tuned vit_*) or a student
        _check_input_size(model, path, trained_size, image_size, fix)
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise DistillError(f"model {path} does not fit student {student!r}: {str(err).splitlines()[0]}") from None
        return model.eval(), ModelInfo(student, image_size or trained_size, payload.get("meta", {}))
    del payload
    state_dict = read_state_dict(path)  # raises a one-line reason for files that are not state dicts
    model, arch = sam_from_state_dict(state_dict, path)
    _check_input_size(model, path, int(model.image_encoder.img_size), image_size, fix)
    return model, ModelInfo(arch if arch == "tinyvit_5m" else f"sam_{arch}", int(model.image_encoder.img_size))


def _check_input_size(model: Sam, path: Path, trained_size: int, image_size: int | None, fix: str) -> None:
    """One line when a model is asked to run at a size its encoder cannot take."""
    if image_size is None or image_size == trained_size:
        return
    if not getattr(model.image_encoder, "any_input_size", False):
        raise DistillError(f"model {path} runs at {trained_size} px only, not {image_size}: its encoder "
                           f"({type(model.image_encoder).__name__}) holds weights for that size; "
                           + fix.format(size=trained_size))


def build_sam_for(encoder: str, image_size: int, checkpoint: Path | None = None) -> Sam:
    """A SAM around the named encoder: from a checkpoint (ours or official) or random-initialised."""
    from sam_distill.sam.build import ARCHITECTURES, build_sam, sam_with_encoder

    if checkpoint is not None:
        # An encoder that takes any input size trains on at another one (a teacher fine-tuned at 512 px goes on at
        # 768, where remote-sensing objects span more embedding cells); a ViT holds its size's weights.
        sam, info = load_model(checkpoint, image_size, fix="set image_size to {size}")
        held = info.student.removeprefix("sam_")
        if held != encoder:  # the saved model is rebuilt from the name, so it must be the checkpoint's own
            raise DistillError(f"encoder checkpoint {checkpoint} holds a {held} encoder but the encoder is named "
                               f"{encoder!r}; set the encoder name to {held}")
        return sam
    if encoder in ARCHITECTURES:
        return build_sam(encoder, image_size)

    return sam_with_encoder(create_student(encoder, image_size=image_size), image_size)
