"""Inference of every automatic instance model (RSPrompter heads, SAM-det, SAM-seg): predictions as COCO results
(RLE masks at the original resolution) and overlay images; and the one output layout every kind's ``predict``
writes (:func:`write_predictions`)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything.modeling import Sam
from torch.utils.data import DataLoader
from torchvision.ops import masks_to_boxes
from tqdm import tqdm

from sam_distill.data.coco import collate

CHUNK = 16


class Predictions(NamedTuple):
    """What every model kind's ``predict`` function returns (``ModelKind.predict``: called as
    ``predict(model_path, image_paths, device, **options)``): COCO results, COCO image entries (with their
    ``path``; ids from 1 in reading order) and the categories the results' ``category_id`` refer to."""

    results: list[dict]
    images: list[dict]
    classes: list[dict]


def to_coco_results(image_size: int, prediction: dict, item: dict, classes: list[dict]) -> list[dict]:
    """One image's prediction → COCO result dicts; masks go through SAM's own ``postprocess_masks``.

    ``prediction["masks"]`` are logits (> 0 is foreground) on the padded S×S input frame at any resolution.
    """
    shim = SimpleNamespace(image_encoder=SimpleNamespace(img_size=image_size))
    height, width = item["original_size"]
    results = []
    scores, labels = prediction["scores"].tolist(), prediction["labels"].tolist()
    for start in range(0, len(scores), CHUNK):
        low = prediction["masks"][start:start + CHUNK, None].float()
        masks = Sam.postprocess_masks(shim, low, tuple(item["input_size"]), (height, width))[:, 0] > 0
        nonempty = masks.flatten(1).any(1)
        if "boxes" in prediction:
            ratio = width / item["input_size"][1]
            boxes = prediction["boxes"][start:start + CHUNK].float().cpu() * ratio
        else:
            boxes = torch.zeros(len(masks), 4)
            if nonempty.any():
                boxes[nonempty.cpu()] = masks_to_boxes(masks[nonempty]).float().cpu()
        for offset, (mask, box) in enumerate(zip(masks, boxes.tolist())):
            if not nonempty[offset]:
                continue  # an empty mask is no instance
            rle = mask_utils.encode(np.asfortranarray(mask.cpu().numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x0, y0, x1, y1 = box
            results.append({"image_id": int(item["image_id"]), "category_id": classes[labels[start + offset] - 1]["id"],
                            "segmentation": rle, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(scores[start + offset])})
    return results


@torch.no_grad()
def predict_dataset(model, dataset, classes: list[dict], device: torch.device, batch_size: int = 2,
                    score_threshold: float = 0.05, progress: bool = True) -> list[dict]:
    model.eval()
    results = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, items in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        predictions = model.predict(images.to(device), score_threshold)
        for prediction, item in zip(predictions, items):
            results.extend(to_coco_results(model.image_size, prediction, item, classes))
    return results


def save_overlay(image: np.ndarray, results: list[dict], classes: list[dict], path: Path,
                 min_score: float = 0.3) -> int:
    """Masks painted over the image in one colour per class, with box outlines (the quick visual check), and a
    caption saying how many of the image's detections reached ``min_score``, so an image with nothing drawn says
    why. Returns how many were drawn."""
    from PIL import ImageDraw

    names = {c["id"]: c["name"] for c in classes}
    colours = {c["id"]: tuple(int(v) for v in np.random.default_rng(c["id"]).integers(40, 255, 3)) for c in classes}
    canvas = image.astype(np.float32).copy()
    kept = [r for r in results if r["score"] >= min_score]
    for result in kept:
        mask = mask_utils.decode(result["segmentation"]).astype(bool)
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * np.array(colours[result["category_id"]])
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for result in kept:
        x, y, w, h = result["bbox"]
        draw.rectangle([x, y, x + w, y + h], outline=colours[result["category_id"]], width=2)
        draw.text((x + 2, y + 2), f"{names[result['category_id']]} {result['score']:.2f}", fill=(255, 255, 255))
    caption = f"{len(kept)} of {len(results)} detections drawn (score at least {min_score:g})"
    if results and not kept:
        caption += f"; best {max(r['score'] for r in results):.2f}"
    draw.rectangle(draw.textbbox((4, 4), caption), fill=(0, 0, 0))
    draw.text((4, 4), caption, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return len(kept)


def write_predictions(out: Path, results: list[dict], images: list[dict], classes: list[dict], overlays: int,
                      min_score: float = 0.3) -> None:
    """What every ``predict`` command writes: ``results.json`` (a COCO results list, ready for pycocotools'
    ``loadRes`` or ``distill eval ap``), ``images.json`` (its images and categories) and ``overlays/``."""
    from sam_distill.core.fileio import atomic_write_json
    from sam_distill.core.images import load_rgb

    out = Path(out)
    atomic_write_json(out / "results.json", results)
    atomic_write_json(out / "images.json", {"images": images, "categories": classes})
    for entry in images[:overlays]:
        save_overlay(load_rgb(entry["path"]), [r for r in results if r["image_id"] == entry["id"]], classes,
                     out / "overlays" / f"{Path(entry['file_name']).stem}.png", min_score)
    print(f"{len(results)} instance(s) in {len(images)} image(s); COCO results in {out / 'results.json'}")


def readable_images(paths: list[Path], image_size: int | None = None, desc: str = "predict", progress: bool = True,
                    log=print):
    """Yields (image H×W×3 uint8, item, COCO image entry with its ``path``) for each readable file, numbered
    from 1; an unreadable one is skipped with one line. The item carries the sizes ``to_coco_results`` needs
    (``input_size`` given the model's ``image_size``). Besides files, ``paths`` may hold in-memory images with a
    ``name`` and a ``load()`` (a scene's tiles, :class:`sam_distill.data.scenes.SceneTile`), read when their turn
    comes."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from sam_distill.core.images import UnreadableImage, load_rgb

    count = 0
    for path in tqdm(paths, desc=desc, unit="image", disable=not progress):
        try:
            image = load_rgb(path) if isinstance(path, (str, Path)) else path.load()  # a file, or a scene's tile
        except UnreadableImage as err:
            log(f"skipped {path}: {err}")
            continue
        count += 1
        height, width = image.shape[:2]
        item = {"image_id": count, "original_size": (height, width),
                "input_size": ResizeLongestSide.get_preprocess_shape(height, width, image_size) if image_size else None}
        yield image, item, {"id": count, "file_name": path.name, "height": height, "width": width, "path": str(path)}


@torch.no_grad()
def predict_images(model, paths: list[Path], classes: list[dict], score_threshold: float = 0.05,
                   progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Unannotated images → (COCO results, COCO image entries with their ``path``); unreadable files are skipped."""
    from sam_distill.core.images import Preprocessing

    model.eval()
    preprocessing = Preprocessing(model.image_size)
    device = next(model.parameters()).device
    results, images = [], []
    for image, item, entry in readable_images(paths, model.image_size, progress=progress):
        prediction = model.predict(preprocessing(image)[None].to(device), score_threshold)[0]
        results.extend(to_coco_results(model.image_size, prediction, item, classes))
        images.append(entry)
    return results, images


def predict_instances(path: Path, images: list[Path], device: torch.device, *,
                      score_threshold: float = 0.05) -> Predictions:
    """``predict`` of RSPrompter and SAM-det/SAM-seg files: the model's class-aware instances above the threshold."""
    from sam_distill.core.model_files import load_model_file

    _, (model, classes) = load_model_file(path, expect=("prompter", "rcnn"))
    results, entries = predict_images(model.to(device), images, classes, score_threshold)
    return Predictions(results, entries, classes)
