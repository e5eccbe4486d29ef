"""Reading SAM checkpoints safely: ``torch.load(weights_only=True)``, so a file holding pickled code is
refused, never executed; every way a file can be wrong becomes one sentence."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from sam_distill.core.errors import DistillError
from sam_distill.sam.build import PATCH_SIZE, VIT_ARCHS, build_sam


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
    return sam_from_state_dict(read_state_dict(path), path)


def sam_from_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> tuple[Sam, str]:
    """The SAM a state dict read from ``path`` belongs to, loaded strictly. Returns (model, arch)."""
    arch = detect_arch(state_dict, path)
    model = build_sam(arch, image_size_of(state_dict, arch))
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DistillError(
            f"checkpoint {path} does not fit SAM {arch}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
    return model.eval(), arch
