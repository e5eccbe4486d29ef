"""SAM teachers: official checkpoints by name, local files, or random-initialised architectures.

Checkpoints are read with ``torch.load(weights_only=True)``: a file holding pickled code is refused,
never executed. Official files are downloaded once into the cache with a sha256 check.
"""
from __future__ import annotations

import os
import pickle
import socket
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from tqdm import tqdm

from .errors import DistillError
from .fileio import sha256_file
from .registry import Registry

PROMPT_EMBED_DIM = 256
PATCH_SIZE = 16
DOWNLOAD_TIMEOUT_S = 20


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


@dataclass(frozen=True)
class OfficialCheckpoint:
    arch: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


TEACHERS: Registry[OfficialCheckpoint] = Registry("teacher")
for _name, _ckpt in {
    "sam_vit_h": OfficialCheckpoint(
        "vit_h",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "sam_vit_l": OfficialCheckpoint(
        "vit_l",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "sam_vit_b": OfficialCheckpoint(
        "vit_b",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
    "mobile_sam": OfficialCheckpoint(
        "tinyvit_5m",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
    ),
}.items():
    TEACHERS.register(_name)(_ckpt)


def checkpoint_cache_dir() -> Path:
    """Where official checkpoints live: ``$SAM_DISTILL_HOME/checkpoints`` (default ``~/.cache/sam-distill``)."""
    home = os.environ.get("SAM_DISTILL_HOME") or Path.home() / ".cache" / "sam-distill"
    return Path(home) / "checkpoints"


# ---------------------------------------------------------------------------------------------
# Building SAM models


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
        from .students import create_student

        return sam_with_encoder(create_student("tinyvit_5m", image_size=image_size), image_size).eval()
    raise DistillError(f"unknown SAM architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


# ---------------------------------------------------------------------------------------------
# Reading checkpoints


class PickledCheckpoint(DistillError):
    """A file the safe loader refused because it pickles classes; ``found`` names the first one."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found

    @property
    def is_ultralytics(self) -> bool:
        return self.found.startswith("ultralytics")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely, turning every way a file can be wrong into one sentence."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise DistillError(f"checkpoint {path} is empty (0 bytes); download it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _pickled_class(str(err))
        hint = " (an ultralytics/YOLO model file)" if "ultralytics" in found else ""
        raise PickledCheckpoint(
            f"checkpoint {path} holds pickled Python objects ({found}){hint}, not a SAM state dict; "
            "it was not loaded, since that would run code from the file",
            found,
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = str(err).splitlines()[0][:160]
        raise DistillError(f"checkpoint {path} is truncated or not a PyTorch file ({reason}); download it again") from None
    if isinstance(obj, dict) and obj.get("format") == "sam-distill/model":
        obj = obj["state_dict"]
    elif isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DistillError(f"checkpoint {path} holds a {type(obj).__name__} that is not a state dict of tensors")
    return obj


def _pickled_class(message: str) -> str:
    for marker in ("GLOBAL ", "Unsupported global: "):
        if marker in message:
            return message.split(marker, 1)[1].split()[0].strip("`'\",.")
    return "unsupported objects"


def detect_arch(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """Which SAM image encoder a state dict belongs to, or a sentence saying what it is instead."""
    parts = {key.split(".", 1)[0] for key in state_dict}
    missing = {"image_encoder", "prompt_encoder", "mask_decoder"} - parts
    if missing:
        first = ", ".join(list(state_dict)[:3])
        raise DistillError(
            f"checkpoint {path} is not a SAM checkpoint: it has no {', '.join(sorted(missing))} weights "
            f"(its first keys are {first})"
        )
    if "image_encoder.layers.0.blocks.0.conv1.c.weight" in state_dict:
        return "tinyvit_5m"
    qkv = state_dict.get("image_encoder.blocks.0.attn.qkv.weight")
    if qkv is None:
        raise DistillError(f"checkpoint {path} has a SAM decoder but an image encoder of no known architecture")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, spec in VIT_ARCHS.items():
        if spec.embed_dim == qkv.shape[1] and spec.depth == depth:
            return name
    raise DistillError(f"checkpoint {path} has a ViT encoder of width {qkv.shape[1]} and depth {depth}, not vit_b/l/h")


def image_size_of(state_dict: dict[str, torch.Tensor], arch: str) -> int:
    if arch in VIT_ARCHS:
        return state_dict["image_encoder.pos_embed"].shape[1] * PATCH_SIZE
    return 1024


def load_sam_checkpoint(path: Path) -> tuple[Sam, str]:
    """Build the right SAM for a checkpoint file and load it strictly. Returns (model, arch)."""
    state_dict = read_state_dict(path)
    arch = detect_arch(state_dict, path)
    model = build_sam(arch, image_size_of(state_dict, arch))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DistillError(
            f"checkpoint {path} does not fit SAM {arch}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
    return model.eval(), arch


# ---------------------------------------------------------------------------------------------
# Official checkpoints


def resolve_official(name: str) -> Path:
    """The local path of an official checkpoint, downloading it (once, sha256-checked) if needed."""
    spec = TEACHERS.get(name)
    target = checkpoint_cache_dir() / spec.filename
    if target.is_file():
        return target
    if os.environ.get("SAM_DISTILL_OFFLINE"):
        raise DistillError(f"{name} is not in the cache and SAM_DISTILL_OFFLINE is set; download {spec.url} and put it at {target}")
    download(spec.url, target, spec.sha256)
    return target


def download(url: str, target: Path, sha256: str) -> None:
    """Download to ``target`` through a ``.part`` file; verify the sha256 before it takes the name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offline = (
        f"could not download {url}; download it by hand and put it at {target} "
        "(or give the file's path as the teacher checkpoint)"
    )
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {target.name}") as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise DistillError(f"{offline} ({reason})") from None
    digest = sha256_file(part)
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise DistillError(f"download of {url} has sha256 {digest}, expected {sha256}; it was deleted, try again")
    os.replace(part, target)


# ---------------------------------------------------------------------------------------------
# The teacher as the rest of the toolkit sees it


@dataclass
class Teacher:
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
    model, arch = load_sam_checkpoint(checkpoint)
    expected = TEACHERS.get(name).arch if name in TEACHERS else name
    if expected in ARCHITECTURES and expected != arch:
        raise DistillError(f"teacher {name!r} expects a {expected} checkpoint but {checkpoint} holds a {arch}")
    return Teacher(model, name, arch, checkpoint, sha256_file(checkpoint), False)
