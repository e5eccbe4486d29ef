"""The teacher's "segment everything" output as pseudo-labels: one SA-1B-style JSON per image.

Layout of a label folder::

    labels.json                      teacher (name, arch, checkpoint sha256), generator settings, image folder
    masks/<relative image path>.json {"image": {...}, "annotations": [{segmentation (COCO RLE), bbox, area,
                                      predicted_iou, stability_score, point_coords, crop_box}, ...]}
    skipped-r000.json                images a rank could not read, with the reason

Each image's JSON is written atomically, so a killed run resumes by skipping images whose JSON
exists. ``labels.json`` is the identity of the set: a rerun with another teacher or other generator
settings into the same folder is refused rather than mixed. torchrun ranks take every
``world_size``-th image of the sorted list, as the embedding cache does.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json, claim_identity, read_json
from sam_distill.core.images import UnreadableImage, find_images, load_rgb
from sam_distill.sam.teachers import Teacher

LABELS_FORMAT = "sam-distill/pseudo-labels/1"
# segment-anything's SamAutomaticMaskGenerator knobs we expose, with its defaults.
GENERATOR_DEFAULTS = {
    "points_per_side": 32,
    "points_per_batch": 64,
    "pred_iou_thresh": 0.88,
    "stability_score_thresh": 0.95,
    "box_nms_thresh": 0.7,
    "crop_n_layers": 0,
    "min_mask_region_area": 0,
}


def generator_settings(**overrides) -> dict:
    unknown = set(overrides) - set(GENERATOR_DEFAULTS)
    if unknown:
        raise DistillError(f"unknown mask generator setting(s) {', '.join(sorted(unknown))}; "
                           f"valid: {', '.join(GENERATOR_DEFAULTS)}")
    return {**GENERATOR_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}


def label_identity(teacher: Teacher, settings: dict, images: Path) -> dict:
    return {
        "format": LABELS_FORMAT,
        "teacher": teacher.identity,
        "generator": settings,
        "images": str(Path(images).resolve()),
    }


def label_path(out: Path, relative: str) -> Path:
    return Path(out) / "masks" / f"{relative}.json"


def label_image(generator, image) -> list[dict]:
    """The generator's masks as SA-1B annotations (ids in order of decreasing predicted IoU)."""
    with torch.inference_mode():
        masks = generator.generate(image)
    masks.sort(key=lambda m: -m["predicted_iou"])
    return [{"id": i + 1, "segmentation": m["segmentation"], "bbox": [float(v) for v in m["bbox"]],
             "area": int(m["area"]), "predicted_iou": float(m["predicted_iou"]),
             "stability_score": float(m["stability_score"]), "point_coords": m["point_coords"],
             "crop_box": [float(v) for v in m["crop_box"]]} for i, m in enumerate(masks)]


def labels_as_results(image_id: int, labels: list[dict]) -> list[dict]:
    """One image's everything-mode masks (``label_image``'s records) as class-agnostic COCO results, each scored by
    the SAM's own predicted IoU."""
    return [{"image_id": image_id, "category_id": 1, "segmentation": label["segmentation"], "bbox": label["bbox"],
             "score": label["predicted_iou"]} for label in labels]


def image_list(images: Path | list[Path]) -> tuple[list[Path], Path]:
    """(sorted image paths, the folder their label paths are relative to) of a folder or a list of files."""
    if isinstance(images, (str, Path)):
        images = Path(images)
        return find_images(images), images if images.is_dir() else images.parent
    paths = sorted(Path(p) for p in images)
    return paths, Path(os.path.commonpath([str(p.parent) for p in paths]))


def pseudo_label(teacher: Teacher, images: Path | list[Path], out: Path, settings: dict | None = None,
                 context: DistContext = DistContext(), log=print) -> dict:
    """Label every image of ``images`` (a folder or a list of files) not yet labelled in ``out``. Safe to kill and rerun."""
    settings = settings or generator_settings()
    out = Path(out)
    paths, root = image_list(images)
    if context.is_main:
        claim_identity(out / "labels.json", label_identity(teacher, settings, root), f"label folder {out}")
    context.barrier()
    if not context.is_main:
        claim_identity(out / "labels.json", label_identity(teacher, settings, root), f"label folder {out}")
    relative = [p.relative_to(root).as_posix() for p in paths]
    mine = [(p, r) for p, r in list(zip(paths, relative))[context.rank :: context.world_size]]
    pending = [(p, r) for p, r in mine if not label_path(out, r).exists()]
    log(f"pseudo-label: {len(paths)} images, {len(mine) - len(pending)} already labelled, {len(pending)} to do on "
        f"rank {context.rank} of {context.world_size}; teacher {teacher.describe()}")
    skipped_file = out / f"skipped-r{context.rank:03d}.json"
    skipped = read_json(skipped_file) if skipped_file.exists() else {}
    counts = {"labelled": 0, "masks": 0, "images_without_masks": 0}
    generator = teacher.everything_generator(settings, context.device) if pending else None
    started = time.time()
    for path, rel in tqdm(pending, desc="pseudo-label", unit="img", disable=not pending or not context.is_main):
        try:
            image = load_rgb(path)
        except UnreadableImage as err:
            skipped[rel] = str(err)
            atomic_write_json(skipped_file, skipped)
            continue
        annotations = label_image(generator, image)
        height, width = image.shape[:2]
        record = {"image": {"file_name": rel, "width": width, "height": height}, "annotations": annotations}
        atomic_write_json(label_path(out, rel), record)
        skipped.pop(rel, None)
        counts["labelled"] += 1
        counts["masks"] += len(annotations)
        counts["images_without_masks"] += not annotations
    if skipped:
        atomic_write_json(skipped_file, skipped)
    elapsed = time.time() - started
    counts.update(skipped=len(skipped), seconds=round(elapsed, 2),
                  seconds_per_image=round(elapsed / counts["labelled"], 3) if counts["labelled"] else None)
    if counts["images_without_masks"]:
        log(f"pseudo-label: {counts['images_without_masks']} image(s) got no masks (empty label files written); "
            f"lower pred_iou_thresh/stability_score_thresh if that is most of them")
    context.barrier()
    return counts


def read_label_set(out: Path) -> tuple[dict, list[dict]]:
    """The header and every per-image record of a label folder (sorted by file name)."""
    out = Path(out)
    if not (out / "labels.json").is_file():
        raise DistillError(f"{out} is not a pseudo-label folder (no labels.json); make one with `distill pseudo-label`")
    header = read_json(out / "labels.json")
    records = [read_json(p) for p in sorted((out / "masks").rglob("*.json"))]
    if not records:
        raise DistillError(f"pseudo-label folder {out} holds no labelled images yet; run `distill pseudo-label` first")
    return header, records
