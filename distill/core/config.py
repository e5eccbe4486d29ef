"""The one config schema of ``distill run``: typed, unknown keys rejected with the valid ones named."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sam_distill.core.errors import DistillError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TeacherConfig(Section):
    """An official name (sam_vit_h, sam_vit_l, sam_vit_b, mobile_sam) or an architecture (vit_b, ...)."""

    name: str = "sam_vit_h"
    checkpoint: Optional[Path] = None
    random_init: bool = Field(False, description="random weights of the architecture: smoke runs only")
    image_size: int = Field(1024, description="only for random_init; checkpoints carry their own")


class SyntheticImages(Section):
    count: int = Field(8, ge=2)
    size: int = Field(512, ge=16)
    seed: int = 0


class DataConfig(Section):
    images: Optional[Path] = None
    max_images: Optional[int] = Field(None, ge=1, description="use only the first N images (sorted by path)")
    synthetic: Optional[SyntheticImages] = None
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    max_holdout: Optional[int] = Field(200, ge=1)


class CacheConfig(Section):
    dir: Optional[Path] = Field(None, description="default: <run_dir>/cache; share one between runs of one teacher")
    shard_size: int = Field(16, ge=1)
    batch_size: int = Field(1, ge=1)
    num_workers: int = Field(0, ge=0)


class StudentConfig(Section):
    name: str = "tinyvit_5m"
    init: Optional[Path] = Field(None, description="start from these encoder weights (our model file or MobileSAM's)")


class TrainConfig(Section):
    epochs: int = Field(8, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_steps: int = Field(200, ge=0)
    amp: bool = True
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(2, ge=0)


class PromptStageConfig(Section):
    """EdgeSAM's prompt-in-the-loop stage: student masks are matched to the teacher's through the frozen decoder."""

    enabled: bool = False
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(1e-4, gt=0)
    prompts_per_image: int = Field(4, ge=1)
    refine_iterations: int = Field(1, ge=0, description="extra points sampled from the disagreement region")
    checkpoint_every: int = Field(200, ge=1)
    num_workers: int = Field(0, ge=0)


class FidelityConfig(Section):
    enabled: bool = True
    points_per_image: int = Field(8, ge=1)
    max_images: Optional[int] = Field(50, ge=1)


class PseudoLabelConfig(Section):
    """segment-anything's SamAutomaticMaskGenerator settings (its defaults)."""

    points_per_side: int = Field(32, ge=1)
    points_per_batch: int = Field(64, ge=1)
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    crop_n_layers: int = Field(0, ge=0)
    min_mask_region_area: int = Field(0, ge=0)


class FastSAMConfig(Section):
    """The FastSAM recipe: teacher pseudo-labels -> YOLO-seg trained by ultralytics -> AP -> export."""

    pseudo_label: PseudoLabelConfig = PseudoLabelConfig()
    ground_truth: Optional[Path] = Field(None, description="COCO instance file for data.images: also report AP on it")
    train_on: Literal["pseudo_labels", "ground_truth"] = "pseudo_labels"
    variant: str = Field("yolov8s-seg", description="yolov8{n,s,m,l,x}-seg, yolo11{n,s,m,l,x}-seg or a local .pt")
    epochs: int = Field(100, ge=1)
    imgsz: int = Field(1024, ge=32)
    batch: int = Field(8, ge=1)
    workers: int = Field(2, ge=0)
    patience: int = Field(100, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    min_area: float = Field(16, ge=0, description="masks whose polygon encloses fewer pixels are dropped")
    max_components: int = Field(8, ge=1, description="masks in more pieces are dropped as speckle")
    eval_conf: float = Field(0.01, gt=0.0, le=1.0)
    export: list[str] = Field(["onnx"], description="ultralytics export formats (onnx, coreml, ...)")


class EncoderConfig(Section):
    """The SAM the instance recipes (prompter, sam_det, sam_seg, sam_cls) build on: the teacher or a distilled
    student, so every method can be compared on the same encoder."""

    name: str = Field("tinyvit_5m", description="vit_b/vit_l/vit_h/vit_tiny/tinyvit_5m or a student (timm_<model>)")
    checkpoint: Optional[Path] = Field(None, description="SAM or sam-distill model file; else RANDOM weights")
    image_size: int = Field(1024, ge=64, multiple_of=16)
    train: bool = Field(False, description="fine-tune the encoder with the head (default: frozen, as RSPrompter)")


class InstanceEvalConfig(Section):
    every: int = Field(100, ge=1, description="validation AP every this many steps (and at the end)")
    score_threshold: float = Field(0.05, ge=0.0, le=1.0)
    overlays: int = Field(4, ge=0, description="overlay images written of the validation split")


class InstancesConfig(Section):
    """COCO instance data shared by the instance recipes: one fixed split, one AP code, one report."""

    annotations: Optional[Path] = Field(None, description="COCO instances json (polygons or RLE)")
    images: Optional[Path] = Field(None, description="folder holding the json's file_name entries")
    synthetic: Optional[SyntheticImages] = Field(None, description="generate shape images with known instances")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="fixed split by file-name hash")
    max_train_images: Optional[int] = Field(None, ge=1)
    max_val_images: Optional[int] = Field(None, ge=1)
    augment: bool = True
    eval: InstanceEvalConfig = InstanceEvalConfig()


class PrompterConfig(Section):
    """RSPrompter: which prompter, which encoder taps, whether SAM's decoder trains too."""

    head: Literal["query", "anchor"] = "query"
    taps: Optional[list[int]] = Field(None, description="ViT blocks / TinyViT stages / timm levels; default: every few")
    width: int = Field(128, ge=8, multiple_of=8)
    num_queries: int = Field(16, ge=1, description="query prompter only")
    prompts_per_object: int = Field(4, ge=2)
    train_decoder: bool = False


class SamSegConfig(Section):
    """SAM-seg: torchvision's Mask R-CNN head on a simple feature pyramid built from the SAM map."""

    width: int = Field(256, ge=32, multiple_of=32, description="feature pyramid channels")
    detections_per_image: int = Field(100, ge=1)


class SamDetConfig(SamSegConfig):
    """SAM-det: a detector's boxes become SAM box prompts and SAM's masks the instance masks."""

    detector: Literal["faster_rcnn", "coco_results"] = Field(
        "faster_rcnn", description="faster_rcnn: trained here on the SAM map; coco_results: given detections")
    detections: Optional[Path] = Field(None, description="coco_results: a COCO results json (image_id, "
                                       "category_id, bbox, score) for instances.annotations' images")
    train_decoder: bool = Field(False, description="faster_rcnn: also fine-tune SAM's mask decoder on the "
                                "ground-truth boxes (for domains far from SA-1B; the paper keeps SAM frozen)")


class SamClsConfig(Section):
    """SAM-cls: SAM's everything-mode masks on the encoder, each labelled by a classifier (or dropped as background)."""

    classifier: Literal["pooled", "clip"] = Field(
        "pooled", description="pooled: an MLP trained on mask-pooled encoder features; clip: zero-shot CLIP")
    everything: PseudoLabelConfig = Field(PseudoLabelConfig(), description="SamAutomaticMaskGenerator settings")
    match_iou: float = Field(0.5, gt=0.0, le=1.0, description="pooled: a proposal takes the class of a ground-truth "
                             "mask it overlaps this much (mask IoU), else it is background")
    geometry: bool = Field(True, description="pooled: add area/box shape to the pooled features")
    hidden: int = Field(256, ge=8, description="pooled: hidden width of the MLP")
    clip_checkpoint: Optional[Path] = Field(None, description="clip: local open_clip weights of clip_model")
    clip_model: str = Field("ViT-B-32", description="clip: open_clip architecture name")
    clip_config: Optional[Path] = Field(None, description="clip: architecture JSON of a custom open_clip model")
    templates: list[str] = Field(["a satellite photo of a {}.", "a photo of a {}."], min_length=1,
                                 description="clip: prompt templates, '{}' becomes the class name")
    background: list[str] = Field(["background"], description="clip: names of what is no class (masks dropped)")


class RunConfig(Section):
    recipe: Literal["mobilesam", "fastsam", "prompter", "sam_det", "sam_seg", "sam_cls"] = "mobilesam"
    name: str = "run"
    run_dir: Optional[Path] = Field(None, description="default: runs/<name>")
    seed: int = 0
    device: str = "auto"
    teacher: TeacherConfig = TeacherConfig()
    data: DataConfig = DataConfig()
    cache: CacheConfig = CacheConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    prompt_stage: PromptStageConfig = PromptStageConfig()
    fidelity: FidelityConfig = FidelityConfig()
    fastsam: FastSAMConfig = FastSAMConfig()
    encoder: EncoderConfig = EncoderConfig()
    instances: InstancesConfig = InstancesConfig()
    prompter: PrompterConfig = PrompterConfig()
    sam_det: SamDetConfig = SamDetConfig()
    sam_seg: SamSegConfig = SamSegConfig()
    sam_cls: SamClsConfig = SamClsConfig()

    def resolved_run_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.name


def _valid_keys(model: type[BaseModel], location: tuple) -> list[str]:
    for part in location[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        for candidate in getattr(annotation, "__args__", ()) or (annotation,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return []
    return list(model.model_fields)


def describe_validation_error(err: ValidationError, source: str, model: type[BaseModel] = RunConfig) -> str:
    first = err.errors()[0]
    location = tuple(first["loc"])
    key = ".".join(str(p) for p in location)
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'; valid keys here: {', '.join(_valid_keys(model, location))}"
    return f"{source}: key '{key}': {first['msg']} (got {first.get('input')!r})"


def parse_config(data: dict, source: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise DistillError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise DistillError(describe_validation_error(err, source)) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` pairs from the command line, values parsed as YAML."""
    for override in overrides:
        if "=" not in override:
            raise DistillError(f"override {override!r} must look like key.sub=value")
        dotted, raw = override.split("=", 1)
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DistillError(f"override {override!r}: '{part}' is not a section")
        node[last] = yaml.safe_load(raw)
    return data


def load_config(path: Path | str, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DistillError(f"config {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_config(apply_overrides(data, overrides or []), str(path))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
