"""Mask and box AP with pycocotools' COCOeval, for every model that yields instance masks (one implementation).

Ground truth and results are COCO JSON files or the same structures in memory; predictions made
in memory become results through :func:`masks_to_results`.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sam_distill.core.errors import DistillError

# The order of COCOeval.stats for iouType segm.
STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
              "AR_medium", "AR_large"]
INSTANCE_METRICS = ("AP", "AP50", "AP75")


def load_json(source, what: str):
    """A JSON file (or the same structure already in memory); a missing or broken file is one sentence."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DistillError(f"{what} file {path} does not exist")
        try:
            return json.loads(path.read_text())
        except ValueError:
            raise DistillError(f"{what} file {path} is not valid JSON") from None
    return source


def masks_to_results(image_id: int, masks: np.ndarray, scores, category_ids=None) -> list[dict]:
    """N×H×W boolean masks of one image → COCO result entries (RLE segmentation, the mask's xywh box)."""
    results = []
    for index, mask in enumerate(np.asarray(masks, dtype=bool)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        category = 1 if category_ids is None else int(category_ids[index])
        results.append({"image_id": int(image_id), "category_id": category, "segmentation": rle, "bbox": bbox,
                        "score": float(scores[index])})
    return results


def _evaluate(gt: COCO, result_list: list, iou_type: str, class_agnostic: bool, image_ids: list[int],
              max_detections: int = 100) -> list[float]:
    """COCOeval's 12 summary numbers (-1, "no ground truth", reported as 0). ``max_detections`` is COCO's per-image
    cap (100); a whole scene is one image holding thousands of objects, so its evaluation raises it."""
    if class_agnostic:  # COCOeval pools only the ground truth's categories, so results must carry one of them
        category = min(gt.getCatIds(), default=1)
        result_list = [{**r, "category_id": category} for r in result_list]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its own tables
        detections = gt.loadRes([dict(r) for r in result_list])
        evaluator = COCOeval(gt, detections, iouType=iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.params.useCats = 0 if class_agnostic else 1
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        # summarize() looks AP up at maxDets == 100 (a default it does not take from params); the accumulated
        # arrays are indexed by position, so naming the third cap 100 makes it read the one evaluated
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.summarize()
    return [max(float(value), 0.0) for value in evaluator.stats]


def _coco(gt_data: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
    return gt


def mask_ap(ground_truth, results, class_agnostic: bool = False, image_ids: list[int] | None = None,
            max_detections: int = 100) -> dict:
    """COCO mask AP of ``results`` against ``ground_truth`` (paths or dicts/lists); stats by name.

    ``class_agnostic`` ignores categories (COCOeval's ``useCats=0``): the right measure for a
    student of SAM's everything mode, whose masks have no class. ``max_detections`` per image: COCO's 100 unless
    an image is a whole scene.
    """
    gt_data = load_json(ground_truth, "ground truth")
    result_list = load_json(results, "results")
    if not isinstance(gt_data, dict) or "annotations" not in gt_data:
        raise DistillError("ground truth must be a COCO instance file (images, annotations, categories)")
    gt_data = dict(gt_data)
    gt_data.setdefault("categories", [{"id": 1, "name": "object"}])
    gt = _coco(gt_data)
    ids = image_ids if image_ids is not None else sorted(gt.getImgIds())
    summary = {"images": len(ids), "ground_truth_instances": len(gt.getAnnIds(imgIds=ids)),
               "detections": len(result_list)}
    if not result_list:
        return {"stats": {name: 0.0 for name in STAT_NAMES}, **summary}
    stats = _evaluate(gt, result_list, "segm", class_agnostic, ids, max_detections)
    return {"stats": dict(zip(STAT_NAMES, stats)), **summary, "max_detections": max_detections}


def instance_ap(ground_truth: COCO | Path | str, results: list[dict] | Path | str,
                image_ids: list[int] | None = None, class_agnostic: bool = False,
                max_detections: int = 100) -> dict[str, float]:
    """Mask and box AP/AP50/AP75 in [0, 1] (``mask_AP``, ``box_AP50``, ...); no results score 0.

    ``image_ids`` restricts the evaluation (e.g. to a validation split of a shared json); ``class_agnostic``
    ignores categories, as :func:`mask_ap` does; ``max_detections`` as there.
    """
    if not isinstance(ground_truth, COCO):
        from sam_distill.data.coco import load_coco

        ground_truth = load_coco(Path(ground_truth))
    result_list = load_json(results, "results")
    metrics = {f"{kind}_{name}": 0.0 for kind in ("mask", "box") for name in INSTANCE_METRICS}
    if not result_list:
        return metrics
    unknown = {r["image_id"] for r in result_list} - set(ground_truth.getImgIds())
    if unknown:
        raise DistillError(f"results name image ids {sorted(unknown)[:5]} that are not in the ground truth")
    ids = list(image_ids) if image_ids is not None else sorted(ground_truth.getImgIds())
    for kind, iou_type in (("mask", "segm"), ("box", "bbox")):
        stats = _evaluate(ground_truth, result_list, iou_type, class_agnostic, ids, max_detections)
        metrics.update({f"{kind}_{name}": value for name, value in zip(INSTANCE_METRICS, stats)})
    return metrics
