"""Instance-segmentation AP with pycocotools: COCO ground truth + COCO results → mask and box AP/AP50/AP75."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import DistillError

METRICS = ("AP", "AP50", "AP75")


def instance_ap(ground_truth: COCO | Path | str, results: list[dict] | Path | str,
                image_ids: list[int] | None = None) -> dict[str, float]:
    """``{"mask_AP", "mask_AP50", "mask_AP75", "box_AP", ...}`` in [0, 1]; an empty result list scores 0.
    ``image_ids`` restricts the evaluation (e.g. to a validation split of a shared json)."""
    if not isinstance(ground_truth, COCO):
        from ..coco_data import load_coco

        ground_truth = load_coco(Path(ground_truth))
    if not isinstance(results, list):
        import json

        path = Path(results)
        if not path.is_file():
            raise DistillError(f"results file {path} does not exist")
        results = json.loads(path.read_text())
    metrics = {f"{kind}_{name}": 0.0 for kind in ("mask", "box") for name in METRICS}
    if not results:
        return metrics
    unknown = {r["image_id"] for r in results} - set(ground_truth.getImgIds())
    if unknown:
        raise DistillError(f"results name image ids {sorted(unknown)[:5]} that are not in the ground truth")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        detections = ground_truth.loadRes([dict(r) for r in results])
        for kind, iou_type in (("mask", "segm"), ("box", "bbox")):
            evaluator = COCOeval(ground_truth, detections, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = list(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
            for name, value in zip(METRICS, evaluator.stats[:3]):
                metrics[f"{kind}_{name}"] = max(0.0, float(value))  # -1 means "no ground truth": report 0
    return metrics
