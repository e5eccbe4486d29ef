"""SAM's promptable-segmentation protocols against ground truth (not against a teacher).

For every ground-truth instance of a COCO file (crowd regions skipped), through segment-anything's ``SamPredictor`` at
the image's own resolution:

* **box**: the ground-truth box as the prompt, one mask (EfficientViT-SAM, EdgeSAM and NanoSAM report this on COCO);
* **1 click**: one positive click at the point farthest from the mask boundary; SAM's three masks, the one with the
  highest predicted IoU kept (what SAM does with a single ambiguous click);
* **k clicks**: RITM's corrective-click protocol (Sofiiuk et al. 2022, also SimpleClick's and SAM's): after each
  prediction the next click goes to the point farthest from the boundary of the larger error region, positive in a
  false-negative region, negative in a false-positive one; SAM gets all clicks so far and its previous low-res
  logits as the mask prompt. mIoU after each click and NoC@85/90 (clicks needed to reach that IoU, ``max_clicks``
  when never reached);
* **box as mask**: the filled ground-truth box itself, the baseline that shows what the prompt alone gives.

Broken down per class and per COCO object size (area < 32², < 96², larger).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy.ndimage import distance_transform_edt
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from tqdm import tqdm

from sam_distill.core.errors import DistillError
from sam_distill.core.images import UnreadableImage, load_rgb
from sam_distill.data.coco import load_coco
from sam_distill.eval.fidelity import mask_iou

SIZE_LIMITS = (("small", 32 ** 2), ("medium", 96 ** 2), ("large", math.inf))
NOC_THRESHOLDS = (0.85, 0.90)


class PredictorLike(Protocol):
    """What the protocols call: ``SamPredictor``'s interface (``export.runtime.SamOnnxPredictor`` has it too)."""

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output: bool = True): ...


class _Sam2Answers:
    """sam2's ``SAM2ImagePredictor`` answering with boolean masks, as ``SamPredictor`` does (its masks are 0/1
    floats), so the protocols run on it unchanged."""

    def __init__(self, model: torch.nn.Module):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model)

    def set_image(self, image: np.ndarray) -> None:
        with torch.inference_mode():
            self.predictor.set_image(image)

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        with torch.inference_mode():
            masks, scores, low_res = self.predictor.predict(point_coords, point_labels, box, mask_input,
                                                            multimask_output)
        return masks > 0, scores, low_res


def promptable(kind: str, model: torch.nn.Module, device: torch.device | str = "cpu") -> PredictorLike:
    """The predictor of a loaded model's own package: segment-anything's for SAM files (``kind`` "sam"), sam2's for
    SAM 2 files ("sam2"), segment-anything-hq's for HQ-SAM files ("hq"; it answers a multimask request with its
    best mask only)."""
    model = model.to(device).eval()
    if kind == "sam2":
        return _Sam2Answers(model)
    if kind == "hq":
        from segment_anything_hq import SamPredictor as HqPredictor

        return HqPredictor(model)
    return SamPredictor(model)


def farthest_from_boundary(region: np.ndarray) -> tuple[tuple[int, int], float]:
    """((x, y), distance) of the pixel of ``region`` farthest from its boundary; the image border counts as
    boundary. Ties go to the first pixel in row-major order, so the protocol is deterministic."""
    distance = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return (int(col), int(row)), float(distance[row, col])


def next_click(ground_truth: np.ndarray, prediction: np.ndarray) -> tuple[tuple[int, int], bool]:
    """RITM's corrective click: ((x, y), positive) in the larger of the false-negative and false-positive regions,
    at its point farthest from the boundary (ties: positive)."""
    fn_point, fn_distance = farthest_from_boundary(ground_truth & ~prediction)
    fp_point, fp_distance = farthest_from_boundary(prediction & ~ground_truth)
    return (fn_point, True) if fn_distance >= fp_distance else (fp_point, False)


def box_mask(box_xywh, height: int, width: int) -> np.ndarray:
    x, y, w, h = box_xywh
    mask = np.zeros((height, width), dtype=bool)
    mask[int(math.floor(y)):int(math.ceil(y + h)), int(math.floor(x)):int(math.ceil(x + w))] = True
    return mask


def size_name(area: float) -> str:
    return next(name for name, limit in SIZE_LIMITS if area < limit)


def corrective_clicks(predictor: PredictorLike, ground_truth: np.ndarray, points: list[list[int]],
                      labels: list[int], prediction: np.ndarray, logits: np.ndarray, clicks: int) -> list[float]:
    """IoU after each of ``clicks`` further corrective clicks, from an answer so far: its clicks (``points``,
    ``labels``), its mask and its low-res logits (1×h×w), fed back as the mask prompt. Each click gets one mask."""
    points, labels, ious = list(points), list(labels), []
    for _ in range(clicks):
        (px, py), positive = next_click(ground_truth, prediction)
        points.append([px, py])
        labels.append(1 if positive else 0)
        masks, _, low_res = predictor.predict(point_coords=np.array(points, dtype=np.float32),
                                              point_labels=np.array(labels), mask_input=logits,
                                              multimask_output=False)
        prediction, logits = masks[0], low_res[0][None]
        ious.append(mask_iou(prediction, ground_truth))
    return ious


def object_ious(predictor: PredictorLike, ground_truth: np.ndarray, box_xywh, max_clicks: int) -> dict:
    """The protocols on one object, the predictor holding its image."""
    height, width = ground_truth.shape
    x, y, w, h = box_xywh
    box, _, _ = predictor.predict(box=np.array([x, y, x + w, y + h], dtype=np.float32), multimask_output=False)
    result = {"box": mask_iou(box[0], ground_truth),
              "box_as_mask": mask_iou(box_mask(box_xywh, height, width), ground_truth)}
    (px, py), _ = next_click(ground_truth, np.zeros_like(ground_truth))  # the first click is always positive
    masks, scores, low_res = predictor.predict(point_coords=np.array([[px, py]], dtype=np.float32),
                                               point_labels=np.array([1]), multimask_output=True)
    best = int(np.argmax(scores))
    clicks = [mask_iou(masks[best], ground_truth)]
    clicks += corrective_clicks(predictor, ground_truth, [[px, py]], [1], masks[best], low_res[best][None],
                                max_clicks - 1)
    result["clicks"] = clicks
    for threshold in NOC_THRESHOLDS:
        reached = [i + 1 for i, iou in enumerate(clicks) if iou >= threshold]
        result[f"noc{round(threshold * 100)}"] = reached[0] if reached else max_clicks
    return result


# the headline figures of a summary, in the order reports show them (plus ``clicks_<k>_miou`` for the last k)
HEADLINE_KEYS = ("box_miou", "point_miou", "box_as_mask_miou", "noc85", "noc90")


def counts_noc(clicks: int) -> bool:
    """NoC@85/90 says something only with more than one click: with one, every object counts as reached at its
    only click (a table or report would show 1.00 whatever the model does)."""
    return clicks > 1


def headline_scores(summary: dict, clicks: int) -> dict[str, float]:
    """The headline numbers of a summary: box, 1 click, k clicks, NoC (``counts_noc``) and the box-as-mask
    baseline."""
    keys = [key for key in HEADLINE_KEYS if counts_noc(clicks) or not key.startswith("noc")]
    return {key: summary[key] for key in (*keys, f"clicks_{clicks}_miou")}


def summarise(rows: list[dict], max_clicks: int) -> dict:
    """Means over objects: box, box_as_mask, point (1 click), clicks_<k> for each k, NoC@85/90."""
    if not rows:
        return {"objects": 0}
    summary = {"objects": len(rows),
               "box_miou": float(np.mean([r["box"] for r in rows])),
               "box_as_mask_miou": float(np.mean([r["box_as_mask"] for r in rows])),
               "point_miou": float(np.mean([r["clicks"][0] for r in rows]))}
    for k in range(1, max_clicks + 1):
        summary[f"clicks_{k}_miou"] = float(np.mean([r["clicks"][k - 1] for r in rows]))
    for threshold in NOC_THRESHOLDS:
        key = f"noc{round(threshold * 100)}"
        summary[key] = float(np.mean([r[key] for r in rows]))
    return summary


@torch.no_grad()
def ground_truth_miou(model: Sam | PredictorLike, annotations: Path, images: Path, max_clicks: int = 5,
                      image_ids: list[int] | None = None, max_images: int | None = None,
                      device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """The protocols over a COCO file's instances; ``{"summary", "per_class", "per_size", "objects"}``.

    ``model`` is a SAM, or anything with ``SamPredictor``'s ``set_image``/``predict`` (the ONNX runtime's
    predictor), so an exported fp16 or INT8 pair is scored by the same code as the model it came from."""
    if max_clicks < 1:
        raise DistillError("max_clicks must be at least 1")
    coco = load_coco(annotations)
    ids = list(image_ids) if image_ids is not None else sorted(coco.getImgIds())
    ids = ids[:max_images] if max_images else ids
    predictor = SamPredictor(model.to(device).eval()) if isinstance(model, Sam) else model
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows, skipped = [], []
    for image_id in tqdm(ids, desc="miou", unit="image", disable=not progress):
        info = coco.imgs[image_id]
        objects = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False)) if a.get("area", 1) > 0]
        if not objects:
            continue
        try:
            image = load_rgb(Path(images) / info["file_name"])
        except UnreadableImage as err:
            skipped.append({"file_name": info["file_name"], "reason": str(err)})
            continue
        if image.shape[:2] != (info["height"], info["width"]):
            raise DistillError(f"{info['file_name']} is {image.shape[1]}×{image.shape[0]} but {annotations} says "
                               f"{info['width']}×{info['height']}")
        predictor.set_image(image)
        for annotation in objects:
            ground_truth = coco.annToMask(annotation).astype(bool)
            if not ground_truth.any():
                continue
            row = object_ious(predictor, ground_truth, annotation["bbox"], max_clicks)
            area = float(mask_utils.area(mask_utils.encode(np.asfortranarray(ground_truth.astype(np.uint8)))))
            row.update(image_id=image_id, annotation_id=annotation["id"], category=names[annotation["category_id"]],
                       size=size_name(area), area=area)
            rows.append(row)
    if not rows:
        raise DistillError(f"{annotations}: no readable image with a non-crowd instance to evaluate")
    per_class, per_size = defaultdict(list), defaultdict(list)
    for row in rows:
        per_class[row["category"]].append(row)
        per_size[row["size"]].append(row)
    return {"summary": summarise(rows, max_clicks), "max_clicks": max_clicks, "images": len({r["image_id"] for r in rows}),
            "per_class": {name: summarise(group, max_clicks) for name, group in sorted(per_class.items())},
            "per_size": {name: summarise(per_size[name], max_clicks) for name, _ in SIZE_LIMITS if name in per_size},
            "objects": rows, "skipped": skipped}


def format_miou_table(result: dict, title: str = "mIoU against ground truth") -> str:
    """Summary, then one line per class and per size. With one click only, the k-click and NoC columns are left
    out: they would repeat the one-click column and say nothing (``counts_noc``)."""
    k = result["max_clicks"]
    columns = [("box", 8, "box_miou", ".3f"), ("1 click", 9, "point_miou", ".3f")]
    if counts_noc(k):
        columns += [(f"{k} clicks", 10, f"clicks_{k}_miou", ".3f"), ("NoC@85", 8, "noc85", ".2f"),
                    ("NoC@90", 8, "noc90", ".2f")]
    columns.append(("box as mask", 13, "box_as_mask_miou", ".3f"))
    head = f"{'':<18}{'objects':>8}" + "".join(f"{name:>{width}}" for name, width, _, _ in columns)
    lines = [title, head, "-" * len(head)]

    def line(name: str, s: dict) -> str:
        return f"{name:<18}{s['objects']:>8}" + "".join(f"{s[key]:>{width}{form}}" for _, width, key, form in columns)

    lines.append(line("all", result["summary"]))
    lines += [line(f"class {name}"[:18], s) for name, s in result["per_class"].items()]
    lines += [line(f"size {name}", s) for name, s in result["per_size"].items()]
    return "\n".join(lines)
