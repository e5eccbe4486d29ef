"""A trained YOLO-seg student used the FastSAM way: segment everything once, then pick masks by prompt.

Everything, box and point prompts go through ultralytics' own ``FastSAM`` predictor (box: the mask
with the best IoU to the box; points: masks holding a positive point and no negative one). Text
prompts rank the everything-masks with CLIP (``sam_distill.sam.text_prompts``), from a local checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sam_distill.core.errors import DistillError


@dataclass
class Segmentation:
    masks: np.ndarray  # N×H×W bool, at the image's size
    boxes: np.ndarray  # N×4 xyxy pixels
    scores: np.ndarray  # N
    classes: np.ndarray  # N (0-based class indices of the student's dataset)


class YoloSegStudent:
    def __init__(self, weights: Path | str, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7,
                 max_det: int = 300, device: str = "cpu"):
        """``imgsz`` None: the size the student was trained at (ultralytics keeps it in the file)."""
        from sam_distill.methods.fastsam.recipe import offline

        offline()
        from ultralytics import FastSAM

        weights = Path(weights)
        if not weights.is_file():
            raise DistillError(f"model {weights} does not exist; train one with `distill yolo train`")
        self.model = FastSAM(str(weights))
        self.options = {"conf": conf, "iou": iou, "max_det": max_det, "device": device, "retina_masks": True,
                        "verbose": False, **({"imgsz": imgsz} if imgsz else {})}

    def _run(self, image: np.ndarray, **prompts) -> Segmentation:
        # ultralytics reads numpy images as BGR; ours are RGB.
        result = self.model(np.ascontiguousarray(image[..., ::-1]), **self.options, **prompts)[0]
        height, width = image.shape[:2]
        if result.masks is None or len(result) == 0:
            return Segmentation(np.zeros((0, height, width), bool), np.zeros((0, 4), np.float32),
                                np.zeros(0, np.float32), np.zeros(0, np.int64))
        masks = result.masks.data.cpu().numpy() > 0.5
        return Segmentation(masks, result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy(),
                            result.boxes.cls.cpu().numpy().astype(np.int64))

    def everything(self, image: np.ndarray) -> Segmentation:
        return self._run(image)

    def box(self, image: np.ndarray, box) -> Segmentation:
        """The mask with the best IoU to each xyxy box."""
        return self._run(image, bboxes=np.asarray(box, dtype=np.float32).reshape(-1, 4).tolist())

    def points(self, image: np.ndarray, points, labels=None) -> Segmentation:
        """Masks holding a positive point (label 1) and no negative one (label 0)."""
        points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
        labels = np.ones(len(points), np.int64) if labels is None else np.asarray(labels, np.int64)
        if len(labels) != len(points):
            raise DistillError(f"{len(points)} point(s) but {len(labels)} label(s); give one label per point")
        return self._run(image, points=points.tolist(), labels=labels.tolist())

    def text(self, image: np.ndarray, text: str, scorer) -> Segmentation:
        """The everything-mask whose crop CLIP finds closest to ``text`` (none when nothing is segmented)."""
        from sam_distill.sam.text_prompts import select_by_text

        found = self.everything(image)
        best, _ = select_by_text(scorer, image, found.masks, text)
        keep = [] if best is None else [best]
        return Segmentation(found.masks[keep], found.boxes[keep], found.scores[keep], found.classes[keep])
