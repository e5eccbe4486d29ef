"""The ``mobilesam`` recipe: cache the teacher's embeddings, distil the student (decoupled, then optionally
EdgeSAM's prompt-in-the-loop stage), assemble a full SAM and measure its fidelity."""
from __future__ import annotations

import torch

from sam_distill.core.config import RunConfigBase as RunConfig
from sam_distill.core.device import init_distributed
from sam_distill.core.errors import DistillError
from sam_distill.core.rundir import RunDir
from sam_distill.data.cache import EmbeddingCache, build_cache
from sam_distill.methods.inputs import resolve_images, resolve_teacher
from sam_distill.methods.mobilesam.config import FidelityConfig, PromptStageConfig, StudentConfig
from sam_distill.methods.mobilesam.stages import (
    check_decoder_training,
    init_student,
    load_trained_student,
    prompt_source,
    prompt_stage,
    train_stage,
    write_models,
)
from sam_distill.methods.registry import register_method
from sam_distill.methods.sections import CacheConfig, DataConfig, TeacherConfig, TrainConfig


def check_mobilesam(config: RunConfig) -> None:
    """The prompt stage's keys that depend on other sections."""
    if config.prompt_stage.enabled:
        prompt_source(config.prompt_stage, config.data)
    if config.prompt_stage.only and not (config.prompt_stage.enabled and config.student.init):
        raise DistillError("prompt_stage.only runs the prompt stage alone from a distilled student: set "
                           "prompt_stage.enabled: true and student.init, or remove prompt_stage.only")


@register_method("mobilesam", {"teacher": TeacherConfig, "data": DataConfig, "cache": CacheConfig, "student": StudentConfig,
                              "train": TrainConfig, "prompt_stage": PromptStageConfig, "fidelity": FidelityConfig},
                 check=check_mobilesam)
def run_mobilesam(config: RunConfig, run_dir: RunDir) -> dict:
    context = init_distributed(config.device)
    torch.manual_seed(config.seed)
    log = run_dir.log if context.is_main else (lambda message: None)
    images = resolve_images(config, run_dir)
    teacher = resolve_teacher(config, run_dir)
    check_decoder_training(config.prompt_stage, teacher)
    cache_dir = config.cache.dir or run_dir.path / "cache"

    summary = build_cache(teacher, images, cache_dir, config.cache.shard_size, config.cache.batch_size,
                          config.cache.num_workers, context=context, log=log, views=tuple(config.cache.views))
    cache = EmbeddingCache(cache_dir)
    train_indices, holdout = cache.split(config.data.holdout_fraction, config.data.max_holdout)
    views = len(config.cache.views)
    log(f"data: {len(train_indices)} training " + ("images" if views == 1 else f"samples ({views} views an image)")
        + f" and {len(holdout)} held-out images")
    meta = {"teacher": teacher.describe(), "teacher_checkpoint_sha256": teacher.checkpoint_sha256,
            "student": config.student.name, "run": str(run_dir.path)}

    student = init_student(config.student.name, cache.image_size, config.student.init, teacher)
    result = {"embed": summary}
    if not config.prompt_stage.only:
        distill_dir = run_dir.sub("checkpoints/distill")
        result["train"] = train_stage(student, cache, train_indices, config.train, distill_dir, context,
                                      config.seed, log, meta, config.student.output_weights)
        final_state = distill_dir / "last.pt"
    if config.prompt_stage.enabled:
        if not config.prompt_stage.only:
            student = load_trained_student(config.student.name, cache.image_size, final_state, teacher)
        prompt_dir = run_dir.sub("checkpoints/prompt")
        result["prompt_stage"] = prompt_stage(student, teacher, cache, train_indices, config.prompt_stage,
                                              config.data, prompt_dir, context, config.seed, log, meta)
        final_state = prompt_dir / "last.pt"
    if not context.is_main:
        return result
    student = load_trained_student(config.student.name, cache.image_size, final_state, teacher)
    result["models"] = write_models(student, config.student.name, teacher, run_dir.sub("model"), meta)
    log(f"model: {', '.join(result['models'].values())}")

    if config.fidelity.enabled and holdout:
        from sam_distill.eval.fidelity import fidelity, format_table, write_fidelity
        from sam_distill.sam.hq_models import load_hq_file
        from sam_distill.sam.model_file import load_model
        from sam_distill.sam.sam2_models import load_sam2_file

        loader = {"sam2": load_sam2_file, "hq": load_hq_file}.get(teacher.family, load_model)
        student_sam = loader(result["models"]["model"])[0]
        limit = holdout[: config.fidelity.max_images] if config.fidelity.max_images else holdout
        report = fidelity(teacher.model, student_sam, cache, limit, config.fidelity.points_per_image,
                          seed=config.seed, device=context.device)
        report["teacher"] = teacher.describe()
        write_fidelity(report, run_dir.sub("reports") / "fidelity.json")
        log(format_table(report))
        result["fidelity"] = report["summary"]
    return result
