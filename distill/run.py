"""``distill run CONFIG``: one recipe, end to end, in one run folder; rerunning resumes it."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from .cache import EmbeddingCache, build_cache
from .config import RunConfig, dump_config, parse_config
from .dist import init_distributed
from .errors import DistillError
from .fileio import atomic_write_text
from .images import find_images, make_synthetic_images
from .pipeline import (init_student, load_trained_student, materialise_random_teacher, prompt_stage, train_stage,
                       write_models)
from .registry import Registry
from .rundir import RunDir
from .teachers import load_teacher

RECIPES: Registry = Registry("recipe")


def prepare_run_dir(config: RunConfig) -> RunDir:
    """Create the run folder, or reopen it when it holds a run of the same config (resume).

    Configs are compared as parsed values, so a saved config that predates a new default section
    still matches.
    """
    run_dir = RunDir(config.resolved_run_dir())
    saved = run_dir.path / "config.yaml"
    if saved.exists() and parse_config(yaml.safe_load(saved.read_text()) or {}, str(saved)) != config:
        raise DistillError(
            f"run folder {run_dir.path} holds a run of a different config; give this run another name "
            f"(name: or run_dir:) or delete that folder"
        )
    atomic_write_text(saved, dump_config(config))
    return run_dir


def resolve_images(config: RunConfig, run_dir: RunDir) -> Path | list[Path]:
    if config.data.images is not None:
        if config.data.max_images:
            return find_images(config.data.images)[: config.data.max_images]
        return config.data.images
    if config.data.synthetic is not None:
        folder = run_dir.path / "data" / "synthetic"
        spec = config.data.synthetic
        if not folder.exists() or len(list(folder.glob("*.png"))) < spec.count:
            make_synthetic_images(folder, spec.count, spec.size, spec.seed)
            run_dir.log(f"data: generated {spec.count} synthetic images in {folder}")
        return folder
    raise DistillError("config: set data.images (an image folder) or data.synthetic (generated images)")


def resolve_teacher(config: RunConfig, run_dir: RunDir):
    spec = config.teacher
    checkpoint = spec.checkpoint
    if spec.random_init:
        checkpoint = materialise_random_teacher(spec.name, spec.image_size, config.seed, run_dir.sub("teacher"))
        run_dir.log(f"teacher: {spec.name} with RANDOM-INITIALISED weights (not pretrained; figures are for "
                    f"smoke testing only), saved at {checkpoint}")
    teacher = load_teacher(spec.name, checkpoint)
    teacher.random_init = spec.random_init
    return teacher


@RECIPES.register("mobilesam")
def run_mobilesam(config: RunConfig, run_dir: RunDir) -> dict:
    context = init_distributed(config.device)
    torch.manual_seed(config.seed)
    log = run_dir.log if context.is_main else (lambda message: None)
    images = resolve_images(config, run_dir)
    teacher = resolve_teacher(config, run_dir)
    cache_dir = config.cache.dir or run_dir.path / "cache"

    summary = build_cache(teacher, images, cache_dir, config.cache.shard_size, config.cache.batch_size,
                          config.cache.num_workers, context=context, log=log)
    cache = EmbeddingCache(cache_dir)
    train_indices, holdout = cache.split(config.data.holdout_fraction, config.data.max_holdout)
    log(f"data: {len(train_indices)} training and {len(holdout)} held-out images")
    meta = {"teacher": teacher.describe(), "teacher_checkpoint_sha256": teacher.checkpoint_sha256,
            "student": config.student.name, "run": str(run_dir.path)}

    student = init_student(config.student.name, cache.image_size, config.student.init)
    distill_dir = run_dir.sub("checkpoints/distill")
    result = {"embed": summary}
    result["train"] = train_stage(student, cache, train_indices, config.train, distill_dir, context,
                                  config.seed, log, meta)
    final_state = distill_dir / "last.pt"
    if config.prompt_stage.enabled:
        student = load_trained_student(config.student.name, cache.image_size, final_state)
        prompt_dir = run_dir.sub("checkpoints/prompt")
        result["prompt_stage"] = prompt_stage(student, teacher, cache, train_indices, config.prompt_stage,
                                              prompt_dir, context, config.seed, log, meta)
        final_state = prompt_dir / "last.pt"
    if not context.is_main:
        return result
    student = load_trained_student(config.student.name, cache.image_size, final_state)
    result["models"] = write_models(student, config.student.name, teacher, run_dir.sub("model"), meta)
    log(f"model: {', '.join(result['models'].values())}")

    if config.fidelity.enabled and holdout:
        from .assemble import load_model
        from .eval.fidelity import fidelity, format_table, write_fidelity

        student_sam, _ = load_model(result["models"]["model"])
        limit = holdout[: config.fidelity.max_images] if config.fidelity.max_images else holdout
        report = fidelity(teacher.model, student_sam, cache, limit, config.fidelity.points_per_image,
                          seed=config.seed, device=context.device)
        report["teacher"] = teacher.describe()
        write_fidelity(report, run_dir.sub("reports") / "fidelity.json")
        log(format_table(report))
        result["fidelity"] = report["summary"]
    return result


def run(config: RunConfig) -> RunDir:
    run_dir = prepare_run_dir(config)
    started = time.time()
    run_dir.log(f"run: recipe {config.recipe} in {run_dir.path}")
    RECIPES.get(config.recipe)(config, run_dir)
    from .eval.report import report_run

    report_run(run_dir.path, config, log=run_dir.log)
    run_dir.log(f"run: finished in {time.time() - started:.0f} s; everything is in {run_dir.path}")
    return run_dir


from . import fastsam  # noqa: E402,F401  (registers the fastsam recipe)
from . import prompter_train  # noqa: E402,F401  (registers the prompter recipe)
from . import baselines  # noqa: E402,F401  (registers the sam_det and sam_seg recipes)
from . import sam_cls  # noqa: E402,F401  (registers the sam_cls recipe)
