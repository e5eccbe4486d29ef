"""The stages of the MobileSAM recipe as functions, shared by ``distill run`` and the single commands."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.model_files import load_model_file
from sam_distill.data.cache import AnnotatedDistillDataset, DistillDataset, EmbeddingCache
from sam_distill.methods.mobilesam.config import PromptStageConfig
from sam_distill.methods.sections import DataConfig, TrainConfig
from sam_distill.sam import hq_models, sam2_models
from sam_distill.sam.model_file import assemble, save_mobilesam_layout, save_model
from sam_distill.sam.teachers import Teacher
from sam_distill.students import create_student
from sam_distill.train.loop import DistillationObjective, Schedule, train
from sam_distill.train.prompt_loop import PromptLoopObjective, StudentWithDecoder


def init_student(name: str, image_size: int, init: Path | None, teacher: Teacher | None = None) -> torch.nn.Module:
    """A new student for the teacher's family: a SAM image encoder, for a SAM 2 teacher a ``Sam2Student``, for an
    HQ-SAM teacher an ``HqStudent``."""
    if teacher is not None and teacher.family == "hq":
        if init is not None:
            raise DistillError("student.init is not available for HQ-SAM teachers yet; remove it")
        return hq_models.build_student(name, teacher.model)
    if teacher is not None and teacher.family == "sam2":
        student, _ = sam2_models.build_student(name, teacher.model, teacher.config)
        if init is not None:
            model, _, _ = sam2_models.load_sam2_file(init)
            try:
                student.image_encoder.load_state_dict(model.image_encoder.state_dict())
            except RuntimeError as err:
                raise DistillError(f"student.init {init} does not fit student {name!r}: "
                                   f"{str(err).splitlines()[0]}") from None
        return student
    student = create_student(name, image_size=image_size)
    if init is not None:
        _, (model, _) = load_model_file(init, expect=("sam",))
        try:
            student.load_state_dict(model.image_encoder.state_dict())
        except RuntimeError as err:
            raise DistillError(f"student.init {init} does not fit student {name!r}: {str(err).splitlines()[0]}") from None
    return student


def train_stage(student: torch.nn.Module, cache: EmbeddingCache, indices: list[int], config: TrainConfig,
                out_dir: Path, context: DistContext, seed: int, log, meta: dict,
                output_weights: dict[str, float] | None = None) -> dict:
    """Decoupled distillation; with a teacher of several outputs, an MSE on each of them, weighted."""
    weights = None
    if len(cache.outputs) > 1:
        unknown = set(output_weights or {}) - set(cache.outputs)
        if unknown:
            raise DistillError(f"student.output_weights names {', '.join(sorted(unknown))}, which this teacher does "
                               f"not output; its outputs are {', '.join(cache.outputs)}")
        weights = {name: (output_weights or {}).get(name, 1.0) for name in cache.outputs}
    return train(DistillationObjective(student, weights), DistillDataset(cache, indices), Schedule.from_config(config),
                 out_dir, context, seed=seed, log=log, meta=meta)


def check_decoder_training(config: PromptStageConfig, teacher: Teacher) -> None:
    """Checked as soon as the teacher is loaded, before any stage runs."""
    if config.enabled and config.train_decoder and teacher.family != "sam":
        raise DistillError(f"prompt_stage.train_decoder is available for SAM teachers only, not for this "
                           f"{teacher.family} teacher; remove it")


def prompt_source(config: PromptStageConfig, data: DataConfig) -> str:
    """Where the prompt stage's first prompts come from, ``annotations`` or ``random``; checked before any
    training starts, so a config that cannot run the stage fails at once, not after the decoupled stage."""
    source = config.prompts if config.prompts != "auto" else ("annotations" if data.annotations else "random")
    if source == "annotations" and (data.annotations is None or data.images is None):
        raise DistillError("prompt_stage.prompts: annotations needs data.annotations (a COCO json) and data.images; "
                           "set them, or set prompt_stage.prompts: random")
    return source


def prompt_stage(student: torch.nn.Module, teacher: Teacher, cache: EmbeddingCache, indices: list[int],
                 config: PromptStageConfig, data: DataConfig, out_dir: Path, context: DistContext, seed: int, log,
                 meta: dict) -> dict:
    if prompt_source(config, data) == "annotations":
        dataset = AnnotatedDistillDataset(cache, data.annotations, data.images, indices)
        missing = sum(image_id is None for image_id in dataset.image_ids)
        log(f"prompt stage: first prompts from the instances of {data.annotations}"
            + (f" ({missing} of {len(indices)} samples not in it get random points)" if missing else ""))
    else:
        dataset = DistillDataset(cache, indices)
        log("prompt stage: first prompts are random points and the boxes of the teacher's masks for them")
    if config.train_decoder:  # the student arrives bare: from student.init or from the decoupled stage
        student = StudentWithDecoder(student, teacher.model.mask_decoder)
    objective = PromptLoopObjective(student, teacher, config.prompts_per_image, config.refine_iterations,
                                    seed=seed, multimask=config.multimask,
                                    iou_weight=config.iou_weight, embedding_weight=config.embedding_weight)
    return train(objective, dataset, Schedule.from_config(config), out_dir, context, seed=seed, log=log, meta=meta)


def load_trained_student(name: str, image_size: int, state_path: Path, teacher: Teacher | None = None
                         ) -> torch.nn.Module:
    """The student a training state holds; a ``StudentWithDecoder`` when the prompt stage trained its decoder."""
    student = init_student(name, image_size, None, teacher)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if teacher is not None and any(key.startswith("mask_decoder.") for key in state["model"]):
        student = StudentWithDecoder(student, teacher.model.mask_decoder)
    student.load_state_dict(state["model"])
    return student.eval()


def write_models(student: torch.nn.Module, name: str, teacher: Teacher, out_dir: Path, meta: dict) -> dict:
    """``model.pt``: a SAM (segment-anything), with the student's own decoder when it trained one; for a SAM 2
    teacher a SAM 2 in sam2's checkpoint layout with ``model.yaml`` beside it; for an HQ-SAM teacher an HQ-SAM; plus
    MobileSAM's layout for a TinyViT student of a SAM teacher."""
    if teacher.family == "sam2":
        model = sam2_models.assemble_student(student, teacher.model)
        encoder = sam2_models.student_encoder_config(name, teacher.config)
        config = sam2_models.model_config(teacher.config, encoder)
        path = sam2_models.save_sam2_model(model, config, out_dir / "model.pt", name, meta)
        return {"model": str(path), "config": str(path.with_suffix(".yaml"))}
    if teacher.family == "hq":
        model = hq_models.assemble_student(student, teacher.model)
        return {"model": str(hq_models.save_hq_model(model, name, out_dir / "model.pt", meta))}
    if isinstance(student, StudentWithDecoder):
        model = assemble(student.image_encoder.cpu().eval(), teacher.model)
        model.mask_decoder.load_state_dict(student.mask_decoder.state_dict())
    else:
        model = assemble(student.cpu().eval(), teacher.model)
    paths = {"model": str(save_model(model, out_dir / "model.pt", name, meta))}
    if name == "tinyvit_5m":
        paths["mobilesam"] = str(save_mobilesam_layout(model, out_dir / "mobile_sam.pt"))
    return paths
