"""The teacher as the rest of the toolkit sees it: an official name (downloaded once, digest-checked), a local
checkpoint (read with ``weights_only=True``) or a random-initialised architecture, behind one ``Teacher``: SAM's
through segment-anything, SAM 2's and SAM 2.1's (``Sam2Teacher``) through the sam2 package, HQ-SAM's
(``HqTeacher``) through segment-anything-hq."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import sha256_file
from sam_distill.core.images import Preprocessing
from sam_distill.sam import hq_models, sam2_models
from sam_distill.sam.build import ARCHITECTURES, build_sam
from sam_distill.sam.model_file import load_model
from sam_distill.sam.official import TEACHERS, resolve_official
from sam_distill.sam.prompts import decode_image


def make_generator(model: torch.nn.Module, settings: dict, device: torch.device, family: str = "sam"):
    """The automatic mask generator of the model's own package, COCO-RLE output: segment-anything's on a ``Sam`` (a
    teacher's, or one around a student encoder), sam2's ``SAM2AutomaticMaskGenerator`` on a SAM 2 ("sam2"),
    segment-anything-hq's on an HQ-SAM ("hq")."""
    if family == "sam2":
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator as Generator
    elif family == "hq":
        from segment_anything_hq import SamAutomaticMaskGenerator as Generator
    else:
        from segment_anything import SamAutomaticMaskGenerator as Generator
    return Generator(model.to(device).eval(), output_mode="coco_rle", **settings)


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

    family = "sam"

    @property
    def image_size(self) -> int:
        return int(self.model.image_encoder.img_size)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size)

    @property
    def outputs(self) -> dict[str, tuple[int, int, int]]:
        """What ``embed_outputs`` returns per image, by name: C×H×W shapes. The first is the image embedding."""
        size = self.image_size // 16
        return {"image_embed": (256, size, size)}

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
        """Preprocessed B×3×S×S images → B×256×S/16×S/16 image embeddings (the distillation target)."""
        return self.embed_outputs(pixels)["image_embed"]

    @torch.inference_mode()
    def embed_outputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the teacher's decoder takes from the image encoder, by name (what the cache stores)."""
        return {"image_embed": self.model.image_encoder(pixels.to(next(self.model.parameters()).device))}

    def decode(self, features, points: tuple[torch.Tensor, torch.Tensor] | None = None,
               boxes: torch.Tensor | None = None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """n prompts on one image's features (``embed_outputs`` of one image; for SAM its 1×256×G×G embedding):
        low-res mask logits n×M×4G×4G and IoU n×M, model-input coordinates. Gradients flow to the features."""
        return decode_image(self.model, features, points=points, boxes=boxes, multimask=multimask)

    def everything_generator(self, settings: dict, device: torch.device):
        return make_generator(self.model, settings, device, self.family)

    def describe(self) -> str:
        if self.random_init:
            return f"{self.name} (RANDOM-INITIALISED {self.arch}, not pretrained: for smoke tests only)"
        return f"{self.name} ({self.arch}, {self.checkpoint})"


@dataclass
class Sam2Teacher(Teacher):
    """A SAM 2 / SAM 2.1 teacher (``model`` is the sam2 package's ``SAM2Base``, ``config`` its hydra config as a
    plain dict). Its input is the image stretched to 1024² (sam2's predictor takes no other size); what a student
    learns to reproduce is the image embedding and the two high-resolution maps its decoder fuses."""

    config: dict = field(default_factory=dict)
    family = "sam2"

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(self.image_size, resize_mode="square")

    @property
    def outputs(self) -> dict[str, tuple[int, int, int]]:
        size = self.image_size // 16
        shapes = {"image_embed": (256, size, size), "high_res_feats_0": (32, size * 4, size * 4),
                  "high_res_feats_1": (64, size * 2, size * 2)}
        return {name: shapes[name] for name in sam2_models.feature_names(self.model)}

    @torch.inference_mode()
    def embed_outputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return sam2_models.image_features(self.model, pixels.to(next(self.model.parameters()).device))

    def decode(self, features: dict[str, torch.Tensor], points=None, boxes=None, multimask: bool = False):
        return sam2_models.decode_features(self.model, features, points=points, boxes=boxes, multimask=multimask)


class HqTeacher(Teacher):
    """An HQ-SAM teacher (``model`` is segment-anything-hq's ``Sam``): SAM's preprocessing, and besides the image
    embedding the early ViT feature its HQ decoder fuses."""

    family = "hq"

    @property
    def outputs(self) -> dict[str, tuple[int, int, int]]:
        size = self.image_size // 16
        width = int(self.model.mask_decoder.compress_vit_feat[0].weight.shape[0])
        return {"image_embed": (256, size, size), "interm_embed_0": (width, size, size)}

    @torch.inference_mode()
    def embed_outputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return hq_models.image_features(self.model, pixels.to(next(self.model.parameters()).device))

    def decode(self, features: dict[str, torch.Tensor], points=None, boxes=None, multimask: bool = False):
        return hq_models.decode_features(self.model, features, points=points, boxes=boxes, multimask=multimask)


def teacher_of(family: str, model: torch.nn.Module, name: str, arch: str, checkpoint: Path | None, digest: str,
               random_init: bool, config: dict | None = None) -> Teacher:
    """A loaded model of any family as the ``Teacher`` of that family (SAM 2's keeps its hydra ``config``)."""
    if family == "sam2":
        return Sam2Teacher(model, name, arch, checkpoint, digest, random_init, config or {})
    return {"sam": Teacher, "hq": HqTeacher}[family](model, name, arch, checkpoint, digest, random_init)


def load_hq_teacher(name: str, checkpoint: Path | None, random_init: bool, image_size: int, seed: int) -> HqTeacher:
    arch = TEACHERS.get(name).arch if name in TEACHERS else name
    if random_init:
        model = hq_models.build_hq_model(arch, image_size, seed=seed)
        return HqTeacher(model, name, arch, None, f"random-init:{arch}:{image_size}:seed{seed}", True)
    checkpoint = Path(checkpoint) if checkpoint is not None else resolve_official(name)
    model, found = hq_models.load_hq_file(checkpoint)
    if hq_models.is_hq_arch(arch) and found != arch:
        raise DistillError(f"teacher {name!r} expects a {arch} checkpoint but {checkpoint} holds a {found}")
    return HqTeacher(model, name, found, checkpoint, sha256_file(checkpoint), False)


def load_sam2_teacher(name: str, checkpoint: Path | None, random_init: bool, seed: int) -> Sam2Teacher:
    arch = TEACHERS.get(name).arch if name in TEACHERS else name
    if random_init:
        model = sam2_models.build_sam2_model(arch, seed=seed)
        config = sam2_models.model_config(sam2_models.sam2_config(arch))
        return Sam2Teacher(model, name, arch, None, f"random-init:{arch}:seed{seed}", True, config)
    checkpoint = Path(checkpoint) if checkpoint is not None else resolve_official(name)
    model, found, config = sam2_models.load_sam2_file(checkpoint)
    if sam2_models.is_sam2_arch(arch) and found != arch:
        raise DistillError(f"teacher {name!r} expects a {arch} checkpoint but {checkpoint} holds a {found}")
    return Sam2Teacher(model, name, found, checkpoint, sha256_file(checkpoint), False, config)


def _at_own_size(teacher: Teacher, image_size: int | None) -> Teacher:
    """SAM 2 and HQ-SAM teachers run at the size they were built for; another one asked for is said, not ignored."""
    if image_size is not None and image_size != teacher.image_size:
        raise DistillError(f"teacher {teacher.name} ({teacher.arch}) runs at {teacher.image_size} px only; leave the "
                           f"teacher's image size unset or set it to {teacher.image_size}")
    return teacher


def load_teacher(
    name: str, checkpoint: Path | str | None = None, random_init: bool = False, image_size: int | None = None,
    seed: int = 0,
) -> Teacher:
    """Resolve a teacher: an official name (downloaded), an architecture with a local file, or random weights.

    ``image_size`` is random weights' input size (1024 unless given). With a checkpoint it is the size to run the
    teacher at, unset meaning the checkpoint's own: only an encoder that takes any input size (a timm ConvNet) can
    run at another, which a remote-sensing teacher gains from when its objects are a cell or two of the embedding
    (docs/CHAIN.md); a ViT's weights are for its own size, and saying another one is an error, not a resize."""
    arch = TEACHERS.get(name).arch if name in TEACHERS else name
    if sam2_models.is_sam2_arch(arch) or (
            checkpoint is not None and arch not in ARCHITECTURES and sam2_models.file_holds_sam2(Path(checkpoint))):
        return _at_own_size(load_sam2_teacher(name, checkpoint, random_init, seed), image_size)
    if hq_models.is_hq_arch(arch) or (
            checkpoint is not None and arch not in ARCHITECTURES and hq_models.file_holds_hq(Path(checkpoint))):
        return _at_own_size(load_hq_teacher(name, checkpoint, random_init, image_size or 1024, seed), image_size)
    if random_init:
        image_size = image_size or 1024
        if arch not in ARCHITECTURES:
            known = ", ".join((*ARCHITECTURES, *sam2_models.SAM2_ARCHITECTURES, *hq_models.HQ_ARCHITECTURES))
            raise DistillError(f"unknown teacher architecture {name!r}; choose one of: {known}")
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
    # an official file, MobileSAM's, or a sam-distill model.pt of any encoder
    model, info = load_model(checkpoint, image_size, fix="leave the teacher's image size unset or set it to {size}")
    arch = info.student.removeprefix("sam_")
    expected = TEACHERS.get(name).arch if name in TEACHERS else name
    if expected in ARCHITECTURES and expected != arch:
        raise DistillError(f"teacher {name!r} expects a {expected} checkpoint but {checkpoint} holds a {arch}")
    return Teacher(model, name, arch, checkpoint, sha256_file(checkpoint), False)
