"""``distill predict`` on a YOLO-seg student: FastSAM's prompt modes (:class:`YoloSegStudent`), one per call."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.core.errors import DistillError
from sam_distill.methods.instance_predict import Predictions, readable_images


def predict_yolo_seg(path: Path, images: list[Path], device: torch.device, *,
                     points: list[tuple[float, float, int]] | None = None,
                     box: tuple[float, float, float, float] | None = None,
                     text: str | None = None, clip_checkpoint: Path | None = None, clip_model: str = "ViT-B-32",
                     clip_config: Path | None = None, score_threshold: float = 0.25,
                     imgsz: int | None = None) -> Predictions:
    """Every mask above ``score_threshold`` (ultralytics' ``conf``), or those a prompt picks: ``box`` the mask with
    the best IoU to it, ``points`` masks holding a positive point and no negative one, ``text`` the mask CLIP
    (local weights, ``clip_checkpoint``) matches best. ``imgsz`` defaults to the size the student was trained at."""
    from sam_distill.eval.coco_ap import masks_to_results
    from sam_distill.methods.fastsam.recipe import ultralytics_device
    from sam_distill.methods.fastsam.student import YoloSegStudent

    given = [flag for flag, value in (("--point", points), ("--box", box), ("--text", text)) if value]
    if len(given) > 1:
        raise DistillError(f"a YOLO-seg student takes one prompt at a time (FastSAM's modes), not {' and '.join(given)}")
    if text is None and (clip_checkpoint or clip_config):
        raise DistillError("--clip-checkpoint and --clip-config go with --text")
    scorer = None
    if text is not None:  # before the student: a missing CLIP file is the cheaper mistake to report
        from sam_distill.sam.text_prompts import load_clip

        scorer = load_clip(clip_checkpoint, clip_model, clip_config, device)
    student = YoloSegStudent(path, imgsz=imgsz, conf=score_threshold, device=ultralytics_device(str(device)))
    classes = [{"id": index + 1, "name": name} for index, name in sorted(student.model.names.items())]
    results, entries = [], []
    for image, _, entry in readable_images(images, desc="fastsam"):
        if box:
            found = student.box(image, box)
        elif points:
            found = student.points(image, [p[:2] for p in points], [p[2] for p in points])
        elif text is not None:
            found = student.text(image, text, scorer)
        else:
            found = student.everything(image)
        results += masks_to_results(entry["id"], found.masks, found.scores, found.classes + 1)
        entries.append(entry)
    return Predictions(results, entries, classes)
