"""Mask AP with pycocotools' COCOeval (iouType ``segm``), for any model that yields instance masks.

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

from ..errors import DistillError

# The order of COCOeval.stats for iouType segm.
STAT_NAMES = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR1", "AR10", "AR100", "AR_small",
              "AR_medium", "AR_large"]


def _load(source, what: str):
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
    """N×H×W boolean masks of one image → COCO result entries (RLE segmentation)."""
    results = []
    for index, mask in enumerate(np.asarray(masks, dtype=bool)):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        category = 1 if category_ids is None else int(category_ids[index])
        results.append({"image_id": int(image_id), "category_id": category, "segmentation": rle,
                        "score": float(scores[index])})
    return results


def mask_ap(ground_truth, results, class_agnostic: bool = False, image_ids: list[int] | None = None) -> dict:
    """COCO mask AP of ``results`` against ``ground_truth`` (paths or dicts/lists); stats by name.

    ``class_agnostic`` ignores categories (COCOeval's ``useCats=0``): the right measure for a
    student of SAM's everything mode, whose masks have no class.
    """
    gt_data = _load(ground_truth, "ground truth")
    result_list = _load(results, "results")
    if not isinstance(gt_data, dict) or "annotations" not in gt_data:
        raise DistillError("ground truth must be a COCO instance file (images, annotations, categories)")
    gt_data = dict(gt_data)
    gt_data.setdefault("categories", [{"id": 1, "name": "object"}])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        ids = image_ids if image_ids is not None else sorted(gt.getImgIds())
        if not result_list:
            return {"stats": {name: 0.0 for name in STAT_NAMES}, "images": len(ids),
                    "ground_truth_instances": len(gt.getAnnIds(imgIds=ids)), "detections": 0}
        detections = gt.loadRes(list(result_list))
        evaluator = COCOeval(gt, detections, iouType="segm")
        evaluator.params.imgIds = ids
        evaluator.params.useCats = 0 if class_agnostic else 1
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: max(float(value), 0.0) for name, value in zip(STAT_NAMES, evaluator.stats)}
    return {"stats": stats, "images": len(ids), "ground_truth_instances": len(gt.getAnnIds(imgIds=ids)),
            "detections": len(result_list)}
