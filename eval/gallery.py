"""Every model's masks on the same few images, ground truth first: one picture, because people judge segmentation by
looking at it.

Rows are images, columns are the ground truth and then each model. A promptable SAM (teacher or student) is shown
with the ground-truth boxes as its prompts (the box protocol of ``eval miou``), so its column reads "what this model
makes of a box"; an instance model (RSPrompter, SAM-det/seg, SAM-cls, a YOLO-seg student) shows its own detections
above ``min_score``. Colours follow the class name, so a mask in any column has its ground truth's colour.
"""
from __future__ import annotations

import hashlib
import io
import textwrap
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.ndimage import binary_erosion

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_bytes
from sam_distill.core.images import load_rgb
from sam_distill.core.model_files import identify
from sam_distill.data.coco import load_coco

UNLABELLED = (255, 210, 0)


def class_colour(name: str | None) -> tuple[int, int, int]:
    """The same colour for a class name wherever it appears (an everything-mode mask has none: one yellow)."""
    if not name:
        return UNLABELLED
    digest = hashlib.sha256(name.encode()).digest()
    return tuple(int(60 + v % 196) for v in digest[:3])


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The mask's border, two pixels wide: drawn opaque so touching instances stay apart."""
    return mask & ~binary_erosion(mask, iterations=2)


# characters of a column title's line: a 2.6-inch column holds about this many at 7 pt, and a longer title runs
# into its neighbours' (a run name and a model file name side by side easily pass it)
TITLE_WIDTH = 40


def column_title(label: str, kind: str | None) -> str:
    """A column's title, wrapped to its column (at spaces first, then inside long names)."""
    lines = [line[start:start + TITLE_WIDTH] for line in textwrap.wrap(label, TITLE_WIDTH, break_long_words=False)
             for start in range(0, len(line), TITLE_WIDTH)] or [""]
    return "\n".join(lines + (["(GT boxes as prompts)"] if kind == "sam" else []))


def paint(image: np.ndarray, masks: list[np.ndarray], colours: list[tuple[int, int, int]]) -> np.ndarray:
    """Masks blended at half opacity, each with a solid outline so touching instances stay apart."""
    canvas = image.astype(np.float32).copy()
    for mask, colour in zip(masks, colours):
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * np.array(colour, np.float32)
    for mask, colour in zip(masks, colours):
        canvas[mask_outline(mask)] = colour
    return canvas.clip(0, 255).astype(np.uint8)


def _ground_truth(coco, image_id: int) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    objects = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a.get("area", 1) > 0]
    masks = [coco.annToMask(a).astype(bool) for a in objects]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)], np.float32).reshape(-1, 4)
    return masks, [names[a["category_id"]] for a in objects], boxes


@torch.no_grad()
def _box_prompted(path: Path, images: list[np.ndarray], boxes: list[np.ndarray], device: str) -> list[list[np.ndarray]]:
    """A SAM's mask for each ground-truth box of each image, all boxes of an image in one decoder batch."""
    from segment_anything import SamPredictor

    from sam_distill.sam.model_file import load_model

    sam, _ = load_model(path)
    predictor = SamPredictor(sam.to(device).eval())
    out = []
    for image, image_boxes in zip(images, boxes):
        if not len(image_boxes):
            out.append([])
            continue
        predictor.set_image(image)
        prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(image_boxes, device=device), image.shape[:2])
        masks, _, _ = predictor.predict_torch(None, None, boxes=prompts, multimask_output=False)
        out.append([m for m in masks[:, 0].cpu().numpy()])
    return out


def _detected(kind, path: Path, image_paths: list[Path], device: str, min_score: float):
    """An instance model's own masks and class names per image, above ``min_score``."""
    predictions = kind.function("predict")(path, image_paths, torch.device(device))
    names = {c["id"]: c["name"] for c in predictions.classes}
    per_image: dict[int, tuple[list, list]] = {entry["id"]: ([], []) for entry in predictions.images}
    for result in predictions.results:
        if result.get("score", 1.0) >= min_score and result["image_id"] in per_image:
            masks, labels = per_image[result["image_id"]]
            masks.append(mask_utils.decode(result["segmentation"]).astype(bool))
            labels.append(names.get(result["category_id"]))
    return [per_image.get(entry["id"], ([], [])) for entry in predictions.images]


def build_gallery(models: list[tuple[str, Path]], annotations: Path, images_dir: Path, image_ids: list[int],
                  out: Path, device: str = "cpu", *, min_score: float, log=print) -> dict:
    """Write ``out`` (PNG) and return ``{"images": [file names], "columns": [{label, kind, instances | error}]}``.

    A model that cannot predict here (a missing CLIP checkpoint, an unreadable file) keeps its column with the
    reason written in it, and the reason is returned, so one broken model never costs the picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coco = load_coco(annotations)
    missing = [i for i in image_ids if i not in coco.imgs]
    if missing or not image_ids:
        raise DistillError(f"overlays: image ids {missing or image_ids} are not in {annotations}")
    image_paths = [Path(images_dir) / coco.imgs[i]["file_name"] for i in image_ids]
    images = [load_rgb(p) for p in image_paths]
    truth = [_ground_truth(coco, i) for i in image_ids]
    columns = [{"label": "ground truth", "kind": "annotations", "instances": [len(m) for m, _, _ in truth],
                "tiles": [paint(img, m, [class_colour(n) for n in names]) for img, (m, names, _) in zip(images, truth)]}]
    for label, path in models:
        column = {"label": label, "path": str(path)}
        try:
            kind = identify(path)
            column["kind"] = kind.name
            if kind.name == "sam":
                found = _box_prompted(path, images, [b for _, _, b in truth], device)
                labelled = [(masks, names) for masks, (_, names, _) in zip(found, truth)]
            else:
                labelled = _detected(kind, path, image_paths, device, min_score)
            column["instances"] = [len(m) for m, _ in labelled]
            column["tiles"] = [paint(img, m, [class_colour(n) for n in names]) for img, (m, names) in zip(images, labelled)]
        except (DistillError, OSError, RuntimeError, ValueError) as err:
            column["error"] = str(err).splitlines()[0][:200]
            log(f"overlays: {label}: no masks ({column['error']})")
        columns.append(column)

    rows, cols = len(images), len(columns)
    figure, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows + 0.4), squeeze=False)
    for c, column in enumerate(columns):
        for r in range(rows):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if "tiles" in column:
                axis.imshow(column["tiles"][r])
                count = column["instances"][r]
                axis.set_xlabel(f"{count} mask{'' if count == 1 else 's'}", fontsize=7)
            else:
                axis.text(0.5, 0.5, "\n".join(["no masks:", *textwrap.wrap(column["error"], 30)[:6]]), ha="center",
                          va="center", fontsize=6, transform=axis.transAxes)
            if r == 0:
                axis.set_title(column_title(column["label"], column.get("kind")), fontsize=7)
            if c == 0:
                axis.set_ylabel(image_paths[r].name, fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return {"images": [p.name for p in image_paths],
            "columns": [{k: v for k, v in column.items() if k != "tiles"} for column in columns]}
