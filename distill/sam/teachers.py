"""The teacher as the rest of the toolkit sees it: an official name (downloaded once, sha256-checked), a local
checkpoint (read with ``weights_only=True``) or a random-initialised architecture, behind one ``Teacher``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import sha256_file
from sam_distill.sam.build import ARCHITECTURES, build_sam
from sam_distill.sam.model_file import load_model
from sam_distill.sam.official import TEACHERS, resolve_official
from sam_distill.sam.prompts import decode


def make_generator(sam: Sam, settings: dict, device: torch.device):
    """segment-anything's ``SamAutomaticMaskGenerator`` on any ``Sam`` (a teacher's, or one around a student
    encoder), COCO-RLE output."""
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam.to(device).eval(), output_mode="coco_rle", **settings)


@dataclass
class Teacher:
    """A SAM teacher, and the seam every other teacher family fits: what the data and training layers ask of a
    teacher goes through ``embed`` (images → what the student learns to reproduce), ``decode`` (prompts on
    embeddings → mask logits and IoU) and ``everything_generator`` (SAM's automatic masks), plus ``identity``
    (what caches and label folders are stamped with). A SAM 2 or HQ-SAM teacher implements these for its own
    package; ``model`` is the segment-anything ``Sam`` whose prompt encoder and decoder a student is assembled with."""

    model: Sam
    name: str
    arch: str
    checkpoint: Path | None
    checkpoint_sha256: str
    random_init: bool

    @property
    def image_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def identity(self) -> dict:
        """What must match for two outputs of this teacher to be interchangeable."""
        return {"name": self.name, "arch": self.arch, "checkpoint_sha256": self.checkpoint_sha256,
                "random_init": self.random_init}

    def to(self, device: torch.device | str) -> "Teacher":
        self.model.to(device)
        return self

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """SAM-preprocessed B×3×S×S images → B×256×S/16×S/16 image embeddings (the distillation target)."""
        return self.model.image_encoder(pixels.to(next(self.model.parameters()).device))

    def decode(self, embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits and IoU scores of one prompt set per embedding row (model-input coordinates)."""
        return decode(self.model, embeddings, points=points, boxes=boxes, multimask=multimask)

    def everything_generator(self, settings: dict, device: torch.device):
        return make_generator(self.model, settings, device)

    def describe(self) -> str:
        if self.random_init:
            return f"{self.name} (RANDOM-INITIALISED {self.arch}, not pretrained: for smoke tests only)"
        return f"{self.name} ({self.arch}, {self.checkpoint})"


def load_teacher(
    name: str, checkpoint: Path | str | None = None, random_init: bool = False, image_size: int = 1024, seed: int = 0
) -> Teacher:
    """Resolve a teacher: an official name (downloaded), an architecture with a local file, or random weights."""
    if random_init:
        arch = TEACHERS.get(name).arch if name in TEACHERS else name
        if arch not in ARCHITECTURES:
            raise DistillError(f"unknown teacher architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
        torch.manual_seed(seed)
        model = build_sam(arch, image_size)
        return Teacher(model.eval(), name, arch, None, f"random-init:{arch}:{image_size}:seed{seed}", True)
    if checkpoint is None:
        if name not in TEACHERS:
            raise DistillError(
                f"teacher {name!r} needs a checkpoint file; official names are {', '.join(TEACHERS.names())}"
            )
        checkpoint = resolve_official(name)
    checkpoint = Path(checkpoint)
    model, info = load_model(checkpoint)  # an official file, MobileSAM's, or a sam-distill model.pt of any encoder
    arch = info.student.removeprefix("sam_")
    expected = TEACHERS.get(name).arch if name in TEACHERS else name
    if expected in ARCHITECTURES and expected != arch:
        raise DistillError(f"teacher {name!r} expects a {expected} checkpoint but {checkpoint} holds a {arch}")
    return Teacher(model, name, arch, checkpoint, sha256_file(checkpoint), False)
