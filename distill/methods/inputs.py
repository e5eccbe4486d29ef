"""What several methods read from a run's config: the images (a folder, a subset or generated ones) and
the teacher (official, a local file, or random weights written once so every stage and rerun uses them)."""
from __future__ import annotations

from pathlib import Path

from sam_distill.core.config import RunConfigBase as RunConfig
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_torch_save
from sam_distill.core.images import find_images, make_synthetic_images
from sam_distill.core.rundir import RunDir
from sam_distill.sam.teachers import load_teacher


def resolve_images(config: RunConfig, run_dir: RunDir) -> Path | list[Path]:
    if config.data.images is not None:
        if config.data.annotations is not None:
            return split_images(config.data.images, config.data.annotations, config.data.split,
                                config.data.val_fraction)[: config.data.max_images]
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


def split_images(folder: Path, annotations: Path, split: str, val_fraction: float) -> list[Path]:
    """The images of one side of a COCO file's fixed split, so a distillation never sees the images that the
    instance recipes and ``eval miou`` validate on."""
    from sam_distill.data.coco import load_coco, split_image_ids

    coco = load_coco(annotations)
    paths = [Path(folder) / coco.imgs[i]["file_name"] for i in split_image_ids(coco, split, val_fraction, annotations)]
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise DistillError(f"data.annotations {annotations} names {len(missing)} image(s) that data.images {folder} "
                           f"lacks, e.g. {missing[0].name}; point data.images at the folder of its file_name entries")
    return paths


def resolve_teacher(config: RunConfig, run_dir: RunDir):
    spec = config.teacher
    checkpoint = spec.checkpoint
    if spec.random_init:
        checkpoint = materialise_random_teacher(spec.name, spec.image_size or 1024, config.seed,
                                                run_dir.sub("teacher"))
        run_dir.log(f"teacher: {spec.name} with RANDOM-INITIALISED weights (not pretrained; figures are for "
                    f"smoke testing only), saved at {checkpoint}")
    teacher = load_teacher(spec.name, checkpoint, image_size=None if spec.random_init else spec.image_size)
    teacher.random_init = spec.random_init
    return teacher


def materialise_random_teacher(name: str, image_size: int, seed: int, folder: Path) -> Path:
    """Write a random-initialised teacher once, so every stage (and every rerun) uses the same weights."""
    path = folder / f"{name}-random-init-{image_size}-seed{seed}.pth"
    if not path.exists():
        teacher = load_teacher(name, random_init=True, image_size=image_size, seed=seed)
        state = teacher.model.state_dict()
        atomic_torch_save({"model": state} if teacher.family == "sam2" else state, path)  # each package's layout
    return path
