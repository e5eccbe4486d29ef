"""The ``sam_det`` and ``sam_seg`` recipes: the RSPrompter paper's detector baselines on the configured encoder.

Both train on the same data, split and schedule as the ``prompter`` recipe and are scored by the same
AP code into the same report. ``sam_det`` can also skip training and prompt SAM with boxes another
detector produced (any detector, a YOLO model included, whose detections are written as a COCO results json
with the annotation file's image and category ids).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from sam_distill.core.errors import DistillError
from sam_distill.methods.instances import (
    describe_encoder,
    resolve_coco_data,
    run_trained_instance_recipe,
    split_datasets,
    write_instance_reports,
)
from sam_distill.methods.rcnn.config import SamDetConfig, SamSegConfig
from sam_distill.methods.registry import register_method
from sam_distill.methods.sections import EncoderConfig, InstancesConfig, TrainConfig

if TYPE_CHECKING:
    from sam_distill.sam.families import SamParts


def rcnn_config(config, method: str, num_classes: int) -> dict:
    spec = config.sam_det if method == "sam_det" else config.sam_seg
    return {"method": method, "encoder": config.encoder.name, "image_size": config.encoder.image_size,
            "num_classes": num_classes, "width": spec.width, "detections_per_image": spec.detections_per_image,
            "train_encoder": config.encoder.train, "lora_rank": config.encoder.lora_rank,
            "lora_alpha": config.encoder.lora_alpha, "lora_targets": list(config.encoder.lora_targets),
            "train_decoder": method == "sam_det" and spec.train_decoder,
            **({"head": spec.head, "mask2former": {
                "num_queries": spec.num_queries, "decoder_layers": spec.decoder_layers,
                "pixel_decoder": spec.pixel_decoder, "pixel_decoder_layers": spec.pixel_decoder_layers}}
               if method == "sam_seg" else {})}


def _run_rcnn(config, run_dir, method: str) -> dict:
    from sam_distill.methods.rcnn.model import build_rcnn, save_rcnn

    def build(num_classes: int):
        return build_rcnn(rcnn_config(config, method, num_classes), config.encoder.checkpoint)

    return run_trained_instance_recipe(config, run_dir, method, build, save_rcnn, f"{method}.pt")


def read_detections(path: Path, coco) -> dict[int, list[dict]]:
    """A COCO results json (a list of {image_id, category_id, bbox [x, y, w, h], score}) grouped by image."""
    from sam_distill.eval.coco_ap import load_json

    detections = load_json(Path(path), "sam_det.detections")
    if not isinstance(detections, list) or any(not isinstance(d, dict) or not {"image_id", "category_id", "bbox", "score"}
                                               <= set(d) for d in detections):
        raise DistillError(f"{path} is not a COCO results list: every entry needs image_id, category_id, bbox "
                           f"([x, y, w, h] in original pixels) and score")
    unknown_images = {d["image_id"] for d in detections} - set(coco.getImgIds())
    unknown_classes = {d["category_id"] for d in detections} - set(coco.getCatIds())
    if unknown_images or unknown_classes:
        raise DistillError(f"{path} names image ids {sorted(unknown_images)[:5]} / category ids "
                           f"{sorted(unknown_classes)[:5]} that the annotations do not have")
    grouped: dict[int, list[dict]] = defaultdict(list)
    for detection in detections:
        grouped[int(detection["image_id"])].append(detection)
    return grouped


@torch.no_grad()
def prompt_with_detections(sam: SamParts, dataset, detections: dict[int, list[dict]], device: torch.device,
                           score_threshold: float = 0.05) -> list[dict]:
    """SAM-det on given boxes: each detection's box is a SAM box prompt; results keep its class and score."""
    from sam_distill.methods.instance_predict import to_coco_results

    sam = sam.to(device).eval()
    label_of = {c["id"]: i + 1 for i, c in enumerate(dataset.classes)}
    results = []
    for index in tqdm(range(len(dataset)), desc="sam-det", unit="image"):
        item = dataset[index]
        kept = [d for d in detections.get(item["image_id"], []) if d["score"] >= score_threshold]
        ratio = item["input_size"][1] / item["original_size"][1]  # original pixels → model-input pixels
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in kept)],
                             dtype=torch.float32).reshape(-1, 4) * ratio
        features = sam.encode(item["image"][None].to(device))
        prediction = {"masks": sam.box_masks(features, boxes.to(device)),
                      "scores": torch.tensor([float(d["score"]) for d in kept]),
                      "labels": torch.tensor([label_of[d["category_id"]] for d in kept], dtype=torch.long),
                      "boxes": boxes}
        results.extend(to_coco_results(sam.image_size, prediction, item, dataset.classes))
    return results


def _run_given_detections(config, run_dir) -> dict:
    from sam_distill.core.device import init_distributed
    from sam_distill.sam.families import build_sam_parts

    spec = config.sam_det
    if spec.detections is None:
        raise DistillError("config: sam_det.detector is coco_results, so set sam_det.detections to a COCO results json")
    context = init_distributed(config.device)
    annotations, images = resolve_coco_data(config, run_dir, context)
    if not context.is_main:  # nothing to train: rank 0 prompts SAM with the given boxes alone
        return {}
    _, val_set = split_datasets(annotations, images, config.instances, config.encoder.image_size)
    if not len(val_set):
        raise DistillError("config: the split left no validation images to score; raise instances.val_fraction")
    detections = read_detections(spec.detections, val_set.coco)
    encoder = describe_encoder(config.encoder)
    run_dir.log(f"sam_det: boxes from {spec.detections} as SAM box prompts on {encoder}, {len(val_set)} val images")
    sam = build_sam_parts(config.encoder.name, config.encoder.image_size, config.encoder.checkpoint)
    results = prompt_with_detections(sam, val_set, detections, context.device, config.instances.eval.score_threshold)
    name = f"sam_det ({Path(spec.detections).name} boxes)"
    return {"ap": write_instance_reports(run_dir, "sam_det", name, val_set, results, encoder,
                                         config.instances.eval)}


@register_method("sam_det", {"encoder": EncoderConfig, "instances": InstancesConfig, "train": TrainConfig,
                            "sam_det": SamDetConfig})
def run_sam_det(config, run_dir) -> dict:
    if config.sam_det.detector == "coco_results":
        return _run_given_detections(config, run_dir)
    return _run_rcnn(config, run_dir, "sam_det")


@register_method("sam_seg", {"encoder": EncoderConfig, "instances": InstancesConfig, "train": TrainConfig,
                            "sam_seg": SamSegConfig})
def run_sam_seg(config, run_dir) -> dict:
    return _run_rcnn(config, run_dir, "sam_seg")
