"""``distill predict`` on a SAM file (ours, MobileSAM's or an official checkpoint), a SAM 2 file or an HQ-SAM file:
each family's own package's tools.

With point or box prompts, the package's predictor (``SamPredictor``, ``SAM2ImagePredictor``, segment-anything-hq's
``SamPredictor``) cuts one mask per image (the same prompt on every image, in its pixels); with none, its automatic
mask generator segments everything, as ``distill pseudo-label`` does. SAM's masks have no class: every result is
category 1, ``object``, scored by SAM's own predicted IoU.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sam_distill.core.errors import DistillError
from sam_distill.methods.instance_predict import Predictions, readable_images

CLASSES = [{"id": 1, "name": "object"}]


def predict_sam(path: Path, images: list[Path], device: torch.device, *,
                points: list[tuple[float, float, int]] | None = None,
                box: tuple[float, float, float, float] | None = None,
                generator: dict | None = None, image_size: int | None = None) -> Predictions:
    """Prompted masks (``points``: (x, y, label 1 object / 0 background), ``box``: x0 y0 x1 y1) or, with
    neither, everything mode with segment-anything's generator (``generator`` overrides its settings);
    ``image_size`` runs the model at another input size than it was trained at (``load_model``)."""
    from sam_distill.sam.model_file import load_model

    return _predict("sam", load_model(path, image_size)[0], images, device, points, box, generator)


def predict_sam2(path: Path, images: list[Path], device: torch.device, *,
                 points: list[tuple[float, float, int]] | None = None,
                 box: tuple[float, float, float, float] | None = None,
                 generator: dict | None = None) -> Predictions:
    """``predict_sam`` for a SAM 2 file, through sam2's predictor and ``SAM2AutomaticMaskGenerator``."""
    from sam_distill.sam.sam2_models import load_sam2_file

    return _predict("sam2", load_sam2_file(path)[0], images, device, points, box, generator)


def predict_hq(path: Path, images: list[Path], device: torch.device, *,
               points: list[tuple[float, float, int]] | None = None,
               box: tuple[float, float, float, float] | None = None,
               generator: dict | None = None) -> Predictions:
    """``predict_sam`` for an HQ-SAM file, through segment-anything-hq's predictor and mask generator."""
    from sam_distill.sam.hq_models import load_hq_file

    return _predict("hq", load_hq_file(path)[0], images, device, points, box, generator)


def _predict(family: str, model, images: list[Path], device: torch.device, points, box, generator) -> Predictions:
    if (points or box) and generator:
        raise DistillError("everything-mode settings (--points-per-side, ...) apply without prompts; "
                           "drop them or drop --point/--box")
    model.to(device).eval()
    size = int(model.image_size) if family == "sam2" else int(model.image_encoder.img_size)
    if points or box:
        results, entries = _prompted(family, model, size, images, points or [], box)
    else:
        results, entries = _everything(family, model, size, images, device, generator or {})
    return Predictions(results, entries, CLASSES)


def _prompted(family: str, model, size: int, images: list[Path], points, box) -> tuple[list[dict], list[dict]]:
    from sam_distill.eval.coco_ap import masks_to_results
    from sam_distill.eval.miou import promptable

    predictor = promptable(family, model)
    coords = np.array([p[:2] for p in points], dtype=np.float32) if points else None
    labels = np.array([p[2] for p in points], dtype=np.int64) if points else None
    box_array = np.array(box, dtype=np.float32) if box else None
    ambiguous = box is None and len(points) == 1  # one point: SAM's three candidates, keep its best (as its demo does)
    results, entries = [], []
    for image, _, entry in readable_images(images, size):
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box_array,
                                             multimask_output=ambiguous)
        best = int(scores.argmax())
        if masks[best].any():  # an empty mask is no instance
            results += masks_to_results(entry["id"], masks[best][None], scores[best:best + 1])
        entries.append(entry)
    return results, entries


def _everything(family: str, model, size: int, images: list[Path], device: torch.device, overrides: dict
                ) -> tuple[list[dict], list[dict]]:
    from sam_distill.data.everything import generator_settings, label_image, labels_as_results
    from sam_distill.sam.teachers import make_generator

    generator = make_generator(model, generator_settings(**overrides), device, family)
    results, entries = [], []
    for image, _, entry in readable_images(images, size, desc="everything"):
        results += labels_as_results(entry["id"], label_image(generator, image))
        entries.append(entry)
    return results, entries
