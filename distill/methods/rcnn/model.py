"""SAM-det and SAM-seg, the RSPrompter paper's detector baselines, on any SAM, SAM 2 or HQ-SAM encoder (teacher or
student; ``sam.families``).

The encoder's single stride-16 image embedding becomes a ViTDet-style simple feature pyramid (strides
4 to 64), and torchvision's Faster R-CNN (SAM-det) or Mask R-CNN (SAM-seg) heads run on it with
torchvision's own RPN/RoI defaults. SAM-det turns each detected box into a SAM box prompt and keeps SAM's
mask; SAM-seg keeps Mask R-CNN's own mask, or, with ``head: mask2former`` (the paper's other SAM-seg), runs a
Mask2Former head on the same pyramid (``students.heads.mask2former``, shared with RSPrompter-query) and keeps its
masks. SAM-det can also fine-tune SAM's mask decoder on the ground-truth
boxes (``train_decoder``): the paper keeps SAM frozen, but a domain far from SA-1B, or a SAM without
pretrained weights, needs it. Saved like the prompters: one plain-data ``torch.save``
(``{"format": "sam-distill/sam-rcnn", "config", "classes", "state_dict", "meta"}``), weights_only-loadable.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import paste_masks_in_image

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import load_tagged, save_tagged_model
from sam_distill.sam.families import ImageFeatures, SamParts
from sam_distill.students.heads.anchor_prompter import detect_in_float32
from sam_distill.students.heads.losses import bce_loss, dice_loss, resize_masks
from sam_distill.students.heads.mask2former import Mask2FormerHead, add_losses
from sam_distill.students.heads.pyramid import SimpleFeaturePyramid
from sam_distill.students.lora import adapt_encoder, encoder_mode, lora_settings, merged_encoder_config

RCNN_FORMAT = "sam-distill/sam-rcnn"
DISPLAY_NAMES = {"sam_det": "SAM-det", "sam_seg": "SAM-seg"}
SEG_HEADS = ("maskrcnn", "mask2former")  # SAM-seg's heads, as in the paper
DECODER_BOXES_PER_IMAGE = 16  # ground-truth boxes prompted per image when the decoder trains
EMBED_DIM = 256  # every SAM family's image embedding width
MASK_LOSS_WEIGHT = 5.0  # as the anchor prompter weighs its mask terms against the detection losses


class SamRCNN(nn.Module):
    """SAM encoder → simple feature pyramid → torchvision R-CNN heads; masks from SAM (sam_det) or Mask R-CNN (sam_seg).

    config keys: method, encoder, image_size, num_classes, width, detections_per_image, train_encoder,
    train_decoder (sam_det only).
    """

    def __init__(self, sam: SamParts, config: dict):
        super().__init__()
        self.config = {**config, "sam": sam.spec}
        self.method = config["method"]
        if self.method not in DISPLAY_NAMES:
            raise DistillError(f"unknown detector baseline {self.method!r}; use one of {', '.join(DISPLAY_NAMES)}")
        self.image_size = int(sam.image_size)
        self.sam = sam  # SAM-seg never prompts SAM, so its parts hold no prompt encoder and decoder
        self.sam_masks = self.method == "sam_det"
        embed_dim, width = EMBED_DIM, int(config.get("width", 256))
        self.head = config.get("head", "maskrcnn") if self.method == "sam_seg" else "fasterrcnn"
        if self.head not in SEG_HEADS + ("fasterrcnn",):
            raise DistillError(f"unknown SAM-seg head {self.head!r}; use one of {', '.join(SEG_HEADS)}")
        self.mask2former = None
        if self.head == "mask2former":  # the paper's other SAM-seg: Mask2Former on the same pyramid
            settings = config.get("mask2former", {})
            self.mask2former = Mask2FormerHead(embed_dim, width, int(config["num_classes"]), **settings)
        else:
            self.pyramid = SimpleFeaturePyramid(embed_dim, width)
            scale = self.image_size / 1024  # torchvision's anchor sizes are meant for ~1024-px inputs
            anchors = AnchorGenerator(tuple((max(4, round(size * scale)),) for size in (32, 64, 128, 256, 512)),
                                      ((0.5, 1.0, 2.0),) * 5)
            builder = FasterRCNN if self.sam_masks else MaskRCNN
            rcnn = builder(self.pyramid, num_classes=int(config["num_classes"]) + 1, rpn_anchor_generator=anchors,
                           box_detections_per_img=int(config.get("detections_per_image", 100)))
            self.rpn, self.roi_heads = rcnn.rpn, rcnn.roi_heads  # torchvision's; its resize/normalise is SAM's here
        self.train_encoder = encoder_mode(config.get("train_encoder"))
        self.train_decoder = self.sam_masks and bool(config.get("train_decoder", False))
        self.adapted = adapt_encoder(sam.image_encoder, self.train_encoder, *lora_settings(config))
        if self.sam_masks:
            sam.prompt_encoder.requires_grad_(False)
            sam.mask_decoder.requires_grad_(self.train_decoder)

    def train(self, mode: bool = True):
        super().train(mode)
        self.sam.train(False)
        self.sam.image_encoder.train(mode and self.train_encoder == "full")  # else it stays in inference mode
        if self.sam_masks:
            self.sam.mask_decoder.train(mode and self.train_decoder)
        return self

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        return self.sam.encode(images)

    def losses(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """torchvision's RPN + Fast R-CNN (+ mask) losses; targets: boxes (xyxy, input px), 1-based labels, masks."""
        with nullcontext() if self.train_encoder != "frozen" else torch.no_grad():
            features = self.encode(images)
        if self.mask2former is not None:  # Mask2Former's own recipe: matching and losses after every layer
            losses: dict[str, torch.Tensor] = {}
            for logits, _, masks in self.mask2former(features.embed):
                add_losses(losses, self.mask2former.layer_losses(logits, masks, targets)[0])
            return losses
        wanted = ("boxes", "labels") if self.sam_masks else ("boxes", "labels", "masks")
        det_targets = [{k: t[k].to(torch.uint8) if k == "masks" else t[k] for k in wanted} for t in targets]
        losses = detect_in_float32(self.rpn, self.roi_heads, self.pyramid(features.embed), self.image_size,
                                   det_targets)[2]
        if self.train_decoder:
            losses.update(self._decoder_losses(features, targets))
        return losses

    def _decoder_losses(self, features: ImageFeatures, targets: list[dict]) -> dict[str, torch.Tensor]:
        """BCE + Dice of SAM's answer to each ground-truth box against that instance's mask."""
        logits, wanted = [], []
        for i, target in enumerate(targets):
            pick = torch.randperm(len(target["boxes"]), device=features.embed.device)[:DECODER_BOXES_PER_IMAGE]
            if len(pick):
                low = self.sam.box_masks(features[i:i + 1], target["boxes"][pick])
                logits.append(low)
                wanted.append(resize_masks(target["masks"][pick], low.shape[-1]))
        if not logits:
            return {}
        pred, gt = torch.cat(logits).float(), torch.cat(wanted)
        return {"mask_bce": MASK_LOSS_WEIGHT * bce_loss(pred, gt), "mask_dice": MASK_LOSS_WEIGHT * dice_loss(pred, gt)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, score_threshold: float = 0.05) -> list[dict]:
        """Per image: mask logits on the padded S×S input frame, scores, 1-based labels, boxes (input px)."""
        return self.predict_from_features(self.encode(images), score_threshold)

    @torch.no_grad()
    def predict_from_features(self, features: ImageFeatures, score_threshold: float = 0.05) -> list[dict]:
        """Everything after the image encoder (what ``distill bench`` times as the decoder phase)."""
        if self.mask2former is not None:  # the last layer's queries; their masks are logits at stride 4
            logits, _, masks = self.mask2former(features.embed)[-1]
            scores, labels = Mask2FormerHead.instance_scores(logits, masks)
            keeps = scores >= score_threshold
            return [{"masks": masks[i][keep], "scores": scores[i][keep], "labels": labels[i][keep] + 1}
                    for i, keep in enumerate(keeps)]
        detections = detect_in_float32(self.rpn, self.roi_heads, self.pyramid(features.embed), self.image_size)[1]
        results = []
        for i, detection in enumerate(detections):
            keep = detection["scores"] >= score_threshold
            boxes = detection["boxes"][keep]
            if self.sam_masks:
                masks = self.sam.box_masks(features[i:i + 1], boxes)
            else:  # Mask R-CNN's 28×28 probabilities pasted into the input frame; > 0.5 is foreground
                pasted = paste_masks_in_image(detection["masks"][keep], boxes, (self.image_size, self.image_size))
                masks = (pasted[:, 0] - 0.5).half()
            results.append({"masks": masks, "scores": detection["scores"][keep], "labels": detection["labels"][keep],
                            "boxes": boxes})
        return results


def build_rcnn(config: dict, checkpoint: Path | None = None) -> SamRCNN:
    from sam_distill.sam.families import build_sam_parts

    sam = build_sam_parts(config["encoder"], int(config["image_size"]), checkpoint, config.get("sam"),
                          with_decoder=config["method"] == "sam_det")
    return SamRCNN(sam, config)


def save_rcnn(model: SamRCNN, path: Path, classes: list[dict], meta: dict | None = None) -> Path:
    """A plain file: LoRA adapters are merged into the encoder's weights first (in place)."""
    return save_tagged_model(path, RCNN_FORMAT, model, config=merged_encoder_config(model), classes=classes,
                             meta=meta or {})


def load_rcnn(path: Path) -> tuple[SamRCNN, list[dict]]:
    """A saved SAM-det / SAM-seg model and its classes (label i+1 = classes[i])."""
    payload = load_tagged(path, RCNN_FORMAT, "SAM-det/SAM-seg model",
                          "train one with `distill run` and `recipe: sam_det` or `recipe: sam_seg`")
    model = build_rcnn(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload["classes"]
