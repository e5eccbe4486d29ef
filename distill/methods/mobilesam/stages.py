"""The stages of the MobileSAM recipe as functions, shared by ``distill run`` and the single commands."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.model_files import load_model_file
from sam_distill.data.cache import DistillDataset, EmbeddingCache
from sam_distill.methods.mobilesam.config import PromptStageConfig
from sam_distill.methods.sections import TrainConfig
from sam_distill.sam.model_file import assemble, save_mobilesam_layout, save_model
from sam_distill.sam.teachers import Teacher
from sam_distill.students import create_student
from sam_distill.train.loop import DistillationObjective, Schedule, train
from sam_distill.train.prompt_loop import PromptLoopObjective


def init_student(name: str, image_size: int, init: Path | None) -> torch.nn.Module:
    student = create_student(name, image_size=image_size)
    if init is not None:
        _, (model, _) = load_model_file(init, expect=("sam",))
        try:
            student.load_state_dict(model.image_encoder.state_dict())
        except RuntimeError as err:
            raise DistillError(f"student.init {init} does not fit student {name!r}: {str(err).splitlines()[0]}") from None
    return student


def train_stage(student: torch.nn.Module, cache: EmbeddingCache, indices: list[int], config: TrainConfig,
                out_dir: Path, context: DistContext, seed: int, log, meta: dict) -> dict:
    return train(DistillationObjective(student), DistillDataset(cache, indices), Schedule.from_config(config), out_dir,
                 context, seed=seed, log=log, meta=meta)


def prompt_stage(student: torch.nn.Module, teacher: Teacher, cache: EmbeddingCache, indices: list[int],
                 config: PromptStageConfig, out_dir: Path, context: DistContext, seed: int, log, meta: dict) -> dict:
    objective = PromptLoopObjective(student, teacher.model, config.prompts_per_image, config.refine_iterations,
                                    seed=seed)
    return train(objective, DistillDataset(cache, indices), Schedule.from_config(config), out_dir, context, seed=seed,
                 log=log, meta=meta)


def load_trained_student(name: str, image_size: int, state_path: Path) -> torch.nn.Module:
    student = create_student(name, image_size=image_size)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    student.load_state_dict(state["model"])
    return student.eval()


def write_models(student: torch.nn.Module, name: str, teacher: Teacher, out_dir: Path, meta: dict) -> dict:
    model = assemble(student.cpu().eval(), teacher.model)
    paths = {"model": str(save_model(model, out_dir / "model.pt", name, meta))}
    if name == "tinyvit_5m":
        paths["mobilesam"] = str(save_mobilesam_layout(model, out_dir / "mobile_sam.pt"))
    return paths
