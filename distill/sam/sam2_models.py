"""SAM 2 and SAM 2.1 image models through the ``sam2`` package: its own hydra configs and classes, our safe loading.

What the toolkit needs of a SAM 2 besides building it is what ``SAM2ImagePredictor.set_image`` computes and its
decoder consumes: the image embedding (the lowest-resolution FPN level plus the "no memory" embedding) and the two
high-resolution maps (the FPN's stride-4 and stride-8 levels after the decoder's ``conv_s0``/``conv_s1``).
``image_features`` computes exactly these, batched, and ``decode_features`` runs the prompt encoder and mask decoder
on them as the predictor does.

A distilled SAM 2 student is the teacher's ``SAM2Base`` with another ``image_encoder``. Its file is sam2's own
checkpoint layout (``{"model": state_dict}``, which ``sam2.build_sam`` loads) plus, under ``"sam_distill"``, the
hydra config of the whole model, so that the file alone rebuilds it; the same config is written beside it as YAML
for ``hydra.utils.instantiate``. A config read from a file is instantiated only when every ``_target_`` in it is a
class of ``sam2`` or of this toolkit's students: instantiating a config runs the callables it names.
"""
from __future__ import annotations

import copy
import pickle
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError

MODEL_FORMAT = "sam-distill/sam2-model/1"
# The image models of the sam2 package, by architecture, and the hydra config (in that package) each is built from.
SAM2_CONFIGS = {
    **{f"sam2_hiera_{size}": f"configs/sam2/sam2_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")},
    **{f"sam2.1_hiera_{size}": f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")},
}
# A SAM 2.1 whose Hiera has five blocks (stages 1, 1, 2, 1) of width 32: never pretrained, for tests and offline
# smoke runs (as ``vit_tiny`` is for SAM); every other part is SAM 2.1 tiny's.
TEST_ARCHS = {"sam2.1_hiera_nano": ("configs/sam2.1/sam2.1_hiera_t.yaml", [
    "++model.image_encoder.trunk.embed_dim=32", "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[256,128,64,32]"])}
SAM2_ARCHITECTURES = (*SAM2_CONFIGS, *TEST_ARCHS)
# What sam2.build_sam.build_sam2 adds for image prediction: fall back to multimask when one mask is unstable.
IMAGE_PREDICTION_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]
# Trunk (Hiera) width and block count of each published size, to tell a checkpoint's architecture.
HIERA_SHAPES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l", (32, 5): "nano"}
TRUSTED_TARGETS = ("sam2.", "sam_distill.students.")


def require_sam2():
    try:
        import sam2  # noqa: F401  (initialises hydra's config search path on the sam2 package)
    except ImportError:
        raise DistillError("SAM 2 teachers need the sam2 package: pip install 'sam-distill[sam2]'") from None


def is_sam2_arch(arch: str) -> bool:
    return arch in SAM2_ARCHITECTURES


def sam2_config(arch: str):
    """The resolved hydra config (an OmegaConf ``DictConfig``) of an architecture, image-prediction settings on."""
    require_sam2()
    from hydra import compose
    from omegaconf import OmegaConf

    if arch in TEST_ARCHS:
        name, overrides = TEST_ARCHS[arch]
    elif arch in SAM2_CONFIGS:
        name, overrides = SAM2_CONFIGS[arch], []
    else:
        raise DistillError(f"unknown SAM 2 architecture {arch!r}; choose one of: {', '.join(SAM2_ARCHITECTURES)}")
    config = compose(config_name=name, overrides=[*overrides, *IMAGE_PREDICTION_OVERRIDES])
    OmegaConf.resolve(config)
    return config


def check_targets(node, source: str) -> None:
    """Refuse a config that would instantiate anything but sam2's and our students' classes."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(TRUSTED_TARGETS):
            raise DistillError(f"{source} names {target!r} as a class to build; only sam2.* and "
                               "sam_distill.students.* are built from a file's config (it would run that code)")
        for value in node.values():
            check_targets(value, source)
    elif isinstance(node, list):
        for value in node:
            check_targets(value, source)


def instantiate_model(config, source: str) -> nn.Module:
    """The module under ``config["model"]`` (a ``SAM2Base``, or a student's image encoder) from a config (a
    DictConfig or its plain-dict form), random weights, once every class it names is trusted."""
    require_sam2()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(config, resolve=True) if not isinstance(config, dict) else config
    check_targets(plain, source)
    return instantiate(OmegaConf.create(plain)["model"], _recursive_=True)


def build_sam2_model(arch: str, seed: int | None = None) -> nn.Module:
    """A random-initialised SAM 2 of a published (or the test) architecture, in eval mode."""
    if seed is not None:
        torch.manual_seed(seed)
    return instantiate_model(sam2_config(arch), f"sam2 architecture {arch}").eval()


def detect_sam2_arch(state_dict: dict[str, torch.Tensor], path: Path) -> str:
    """Which published SAM 2 / 2.1 a state dict holds (2.1 has the spatial no-object embedding)."""
    width = state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0]
    blocks = len({key.split(".")[3] for key in state_dict if key.startswith("image_encoder.trunk.blocks.")})
    size = HIERA_SHAPES.get((width, blocks))
    if size is None:
        raise DistillError(f"checkpoint {path} holds a SAM 2 whose Hiera (width {width}, {blocks} blocks) is none of "
                           "the published sizes; give it as a sam-distill SAM 2 model file with its config")
    release = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    if size == "nano":
        return "sam2.1_hiera_nano"
    return f"{release}_hiera_{size}"


def is_sam2_state_dict(state_dict: dict) -> bool:
    return any(key.startswith(("sam_mask_decoder.", "image_encoder.trunk.")) for key in state_dict)


def read_sam2_file(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The state dict of a SAM 2 checkpoint (official or ours), read with ``weights_only=True``, and our
    section (format, student, config) when the file is a sam-distill SAM 2 model."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DistillError(f"checkpoint {path} holds pickled Python objects, not a SAM 2 checkpoint; it was not "
                           "loaded, since that would run code from the file") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        reason = str(err).splitlines()[0][:160]
        raise DistillError(f"checkpoint {path} is truncated or not a PyTorch file ({reason}); "
                           "download it again") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise DistillError(f"checkpoint {path} is not a SAM 2 checkpoint (no 'model' state dict in it)")
    ours = obj.get("sam_distill") if isinstance(obj.get("sam_distill"), dict) else None
    return obj["model"], ours


def file_holds_sam2(path: Path) -> bool:
    """Whether a checkpoint file is a SAM 2 one (official or ours); False for anything else, unreadable included."""
    try:
        state_dict, ours = read_sam2_file(path)
    except DistillError:
        return False
    return ours is not None or is_sam2_state_dict(state_dict)


def load_sam2_file(path: Path) -> tuple[nn.Module, str, dict]:
    """(model in eval mode, architecture or student name, its config as a plain dict) of a SAM 2 checkpoint."""
    return sam2_from_state(*read_sam2_file(path), path)


def sam2_from_state(state_dict: dict[str, torch.Tensor], ours: dict | None, path: Path) -> tuple[nn.Module, str, dict]:
    """``load_sam2_file`` on what ``read_sam2_file`` read (for callers that also want our section)."""
    if ours is not None:
        config = ours["config"]
        model = instantiate_model(config, f"model file {path}")
        arch = ours.get("student", "sam2-student")
    else:
        if not is_sam2_state_dict(state_dict):
            raise DistillError(f"checkpoint {path} is not a SAM 2 checkpoint (no Hiera trunk or SAM 2 decoder)")
        arch = detect_sam2_arch(state_dict, path)
        config = model_config(sam2_config(arch))
        model = instantiate_model(config, f"sam2 architecture {arch}")
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise DistillError(f"checkpoint {path} does not fit SAM 2 {arch}: {len(result.missing_keys)} missing keys "
                           f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected "
                           f"(e.g. {result.unexpected_keys[:2]})")
    return model.eval(), arch, config


def model_config(base_config, image_encoder_config: dict | None = None) -> dict:
    """A model's hydra config as a plain dict (``{"model": ...}``), with a student's image encoder when given."""
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(base_config, resolve=True) if not isinstance(base_config, dict) else base_config
    config = {"model": dict(config["model"])}
    if image_encoder_config is not None:
        config["model"]["image_encoder"] = image_encoder_config
    return config


def save_sam2_model(model: nn.Module, config: dict, path: Path, student: str, meta: dict | None = None) -> Path:
    """sam2's checkpoint layout plus our section; ``<name>.yaml`` beside it holds the config for hydra."""
    import yaml

    from sam_distill.core.fileio import atomic_torch_save, atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_torch_save({"model": state, "sam_distill": {"format": MODEL_FORMAT, "student": student, "config": config,
                                                       "meta": meta or {}}}, path)
    atomic_write_text(path.with_suffix(".yaml"), "# @package _global_\n" + yaml.safe_dump(config, sort_keys=False))
    return path


def feature_names(model: nn.Module) -> tuple[str, ...]:
    levels = model.num_feature_levels - 1 if model.use_high_res_features_in_sam else 0
    return ("image_embed", *(f"high_res_feats_{level}" for level in range(levels)))


def image_features(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What ``SAM2ImagePredictor.set_image`` stores, for a batch: ``image_embed`` (B×256×S/16×S/16, the "no
    memory" embedding added) and ``high_res_feats_0``/``_1`` (B×32×S/4×S/4, B×64×S/8×S/8)."""
    return features_from_fpn(model.image_encoder(pixels)["backbone_fpn"], model)


def features_from_fpn(fpn: list[torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``SAM2Base.forward_image`` and the predictor's feature preparation after the image encoder; ``model``
    is a ``SAM2Base`` or a ``Sam2Student`` (which carries the same parts)."""
    convs = (model.sam_mask_decoder.conv_s0, model.sam_mask_decoder.conv_s1) \
        if model.use_high_res_features_in_sam else ()
    return project_fpn(fpn, model.num_feature_levels,
                       model.no_mem_embed if model.directly_add_no_mem_embed else None, convs)


def project_fpn(fpn: list[torch.Tensor], levels: int, no_mem_embed: torch.Tensor | None,
                convs: tuple[nn.Module, ...]) -> dict[str, torch.Tensor]:
    """The last ``levels`` FPN maps as the decoder takes them: the lowest-resolution one plus the "no memory"
    embedding as ``image_embed``, the others through the decoder's projections ``convs`` (none: not used)."""
    levels = fpn[-levels:]
    embed = levels[-1] if no_mem_embed is None else levels[-1] + no_mem_embed.reshape(1, -1, 1, 1)
    return {"image_embed": embed, **{f"high_res_feats_{level}": conv(feature)
                                     for level, (conv, feature) in enumerate(zip(convs, levels[:-1]))}}


class _HighResProjections(nn.Module):
    """The two 1×1 convolutions of SAM 2's mask decoder that project the high-resolution FPN levels."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.conv_s0 = copy.deepcopy(decoder.conv_s0)
        self.conv_s1 = copy.deepcopy(decoder.conv_s1)


class Sam2Student(nn.Module):
    """A student image encoder (sam2's ``ImageEncoder`` around a small trunk) with the teacher's frozen parts
    that stand between the encoder and what its decoder takes, so it returns exactly the outputs the cache
    holds: a loss on each of them trains the encoder for the teacher's decoder."""

    def __init__(self, image_encoder: nn.Module, teacher: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_mask_decoder = _HighResProjections(teacher.sam_mask_decoder).requires_grad_(False)
        self.register_buffer("no_mem_embed", teacher.no_mem_embed.detach().clone())
        self.num_feature_levels = teacher.num_feature_levels
        self.directly_add_no_mem_embed = teacher.directly_add_no_mem_embed
        self.use_high_res_features_in_sam = teacher.use_high_res_features_in_sam

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return features_from_fpn(self.image_encoder(pixels)["backbone_fpn"], self)


def student_encoder_config(name: str, teacher_config) -> dict:
    """The hydra config of a student ``ImageEncoder``: the trunk by name, the teacher's neck settings (256-d,
    top-down levels, position encoding) on the trunk's channels, the teacher's scalp."""
    from omegaconf import OmegaConf

    from sam_distill.students.sam2_trunk import sam2_trunk_config

    plain = teacher_config if isinstance(teacher_config, dict) else OmegaConf.to_container(teacher_config, resolve=True)
    encoder = plain["model"]["image_encoder"]
    trunk, channels = sam2_trunk_config(name)
    return {**encoder, "trunk": trunk, "neck": {**encoder["neck"], "backbone_channel_list": channels}}


def build_student(name: str, teacher: nn.Module, teacher_config) -> tuple[Sam2Student, dict]:
    """A random-initialised student for a SAM 2 teacher, and its encoder's config."""
    config = student_encoder_config(name, teacher_config)
    return Sam2Student(instantiate_model({"model": config}, f"student {name}"), teacher), config


def assemble_student(student: Sam2Student, teacher: nn.Module) -> nn.Module:
    """The teacher's ``SAM2Base`` (prompt encoder, decoder, memory parts) with the student's image encoder."""
    model = copy.deepcopy(teacher).cpu()
    model.image_encoder = copy.deepcopy(student.image_encoder).cpu()
    return model.eval()


def decode_features(model: nn.Module, features: dict[str, torch.Tensor], points=None, boxes=None,
                    mask_input: torch.Tensor | None = None, multimask: bool = False):
    """SAM 2's prompt encoder and mask decoder on one image's features (batch 1) for n prompts, as the predictor
    runs them: boxes become two corner points (labels 2, 3) before any clicks. Coordinates in model-input pixels.
    Returns low-res logits n×M×S/4×S/4 and IoU n×M."""
    sparse, dense = model.sam_prompt_encoder(points=box_points(points, boxes), boxes=None, masks=mask_input)
    high_res = [features[name] for name in sorted(features) if name.startswith("high_res_feats_")]
    return run_decoder(model.sam_prompt_encoder, model.sam_mask_decoder, features["image_embed"], high_res, sparse,
                       dense, multimask)


def box_points(points, boxes: torch.Tensor | None):
    """sam2's predictor's prompt: each box as its two corner points (labels 2, 3), before the clicks if any."""
    if boxes is None:
        return points
    corners = boxes.reshape(-1, 2, 2)
    labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device).repeat(boxes.shape[0], 1)
    return (corners, labels) if points is None else (torch.cat([corners, points[0]], 1),
                                                     torch.cat([labels, points[1]], 1))


def run_decoder(prompt_encoder: nn.Module, mask_decoder: nn.Module, embed: torch.Tensor,
                high_res: list[torch.Tensor], sparse: torch.Tensor, dense: torch.Tensor, multimask: bool):
    """SAM 2's mask decoder on one image (batch 1) for n prompt embeddings: low-res logits and IoU."""
    low_res, iou, _, _ = mask_decoder(
        image_embeddings=embed, image_pe=prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, repeat_image=sparse.shape[0] > 1,
        high_res_features=high_res or None)
    return low_res, iou
