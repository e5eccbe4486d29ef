"""Anchor-based prompter, as RSPrompter-anchor builds it: the aggregated map becomes a simple feature pyramid
(strides 4–64) with a sine position code added; torchvision's RPN and Fast R-CNN RoI heads find and classify
boxes on it; for each box a 14×14 RoI feature goes through a stride-2 convolution and an MLP to K prompt
embeddings, ``sin(e[..., ::2]) + e[..., 1::2]`` of the MLP's output (the paper's sin-cos), which SAM's decoder
turns into the mask with its no-mask dense embedding. Where a box is in the image reaches the prompts only
through the position code in the pooled features, as in the authors' ``RSPrompterAnchorRoIPromptHead``.
Losses: RPN + Fast R-CNN (torchvision's) + mask BCE/Dice on positive proposals."""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from sam_distill.students.heads import HEADS
from sam_distill.students.heads.losses import bce_loss, dice_loss, resize_masks
from sam_distill.students.heads.pyramid import SimpleFeaturePyramid, sine_positions
from sam_distill.students.heads.query_prompter import PromptHead

BOX_ROI_SIZE = 7  # torchvision's Fast R-CNN box head
PROMPT_ROI_SIZE = 14  # the authors' mask RoI extractor (roi_feat_size=14)
ROI_LEVELS = ["0", "1", "2", "3"]  # strides 4, 8, 16, 32; "pool" (64) feeds the RPN only, as in torchvision


def padded_image_list(like: torch.Tensor, image_size: int) -> ImageList:
    """A batch of padded S×S inputs as torchvision's RPN sees them (it reads only their size)."""
    size = (image_size, image_size)
    return ImageList(like.new_zeros(like.shape[0], 1, *size), [size] * like.shape[0])


def detect_in_float32(rpn: RegionProposalNetwork, roi_heads: RoIHeads, levels: dict[str, torch.Tensor],
                      image_size: int, targets: list[dict] | None = None):
    """torchvision's RPN and RoI heads on pyramid levels, run in float32 even inside an autocast region:
    (proposals, detections, losses). Their anchors take the features' dtype and their box coding is arithmetic on
    pixel coordinates, which bf16 (8 significant bits: steps of 2-4 px at 512 px) rounds into wrong proposals and
    regression targets; with them in bf16 the NWPU chain's anchor prompter went NaN after ~350 steps."""
    first = next(iter(levels.values()))
    with torch.autocast(first.device.type, enabled=False):
        levels = {name: level.float() for name, level in levels.items()}
        images = padded_image_list(first.float(), image_size)
        proposals, rpn_losses = rpn(images, levels, targets)
        detections, detection_losses = roi_heads(levels, proposals, images.image_sizes, targets)
    return proposals, detections, {**rpn_losses, **detection_losses}


@HEADS.register("anchor")
class AnchorPrompter(nn.Module):
    def __init__(self, width: int, num_classes: int, image_size: int, prompts_per_object: int = 5,
                 masks_per_image: int = 16, detections_per_image: int = 50, sincos: bool = True, **_unused):
        super().__init__()
        self.image_size, self.masks_per_image, self.prompts_per_object = image_size, masks_per_image, prompts_per_object
        self.pyramid = SimpleFeaturePyramid(width, width)
        scale = image_size / 1024  # torchvision's anchor sizes are meant for ~1024-px inputs
        anchors = AnchorGenerator(tuple((max(4, round(size * scale)),) for size in (32, 64, 128, 256, 512)),
                                  ((0.5, 1.0, 2.0),) * 5)
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(width, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n=dict(training=1000, testing=300),
            post_nms_top_n=dict(training=300, testing=100), nms_thresh=0.7)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(ROI_LEVELS, BOX_ROI_SIZE, 2), TwoMLPHead(width * BOX_ROI_SIZE ** 2, 256),
            FastRCNNPredictor(256, num_classes + 1), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=128, positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05,
            nms_thresh=0.5, detections_per_img=detections_per_image)
        self.prompt_pool = MultiScaleRoIAlign(ROI_LEVELS, PROMPT_ROI_SIZE, 2)
        self.prompt_head = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Flatten(), PromptHead(width * (PROMPT_ROI_SIZE // 2) ** 2, width, prompts_per_object, sincos))
        self.matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)

    def levels(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pyramid of the aggregated map, each level with the sine position code added."""
        return {name: level + sine_positions(level.shape[1], *level.shape[-2:], level)
                for name, level in self.pyramid(features).items()}

    def prompts(self, levels: dict[str, torch.Tensor], boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        """K prompt embeddings (n×K×256) per image's boxes (input pixels, xyxy)."""
        sizes = [(self.image_size, self.image_size)] * len(boxes)
        prompts = self.prompt_head(self.prompt_pool(levels, boxes, sizes))
        return list(prompts.split([len(b) for b in boxes]))

    def losses(self, model, features, embeddings, targets) -> dict[str, torch.Tensor]:
        levels = self.levels(features)
        det_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        proposals, _, loss = detect_in_float32(self.rpn, self.roi_heads, levels, self.image_size, det_targets)
        # Mask branch on positive proposals (IoU >= 0.5 with a ground-truth box), ground-truth boxes included.
        boxes, gt_masks = [], []
        for proposal, target in zip(proposals, targets):
            candidates = torch.cat([proposal.detach(), target["boxes"]])
            if len(target["boxes"]) == 0:
                boxes.append(candidates[:0])
                gt_masks.append(target["masks"][:0])
                continue
            matched = self.matcher(box_iou(target["boxes"], candidates))
            positive = torch.nonzero(matched >= 0).flatten()
            positive = positive[torch.randperm(len(positive), device=positive.device)[: self.masks_per_image]]
            boxes.append(candidates[positive])
            gt_masks.append(target["masks"][matched[positive]])
        if sum(len(b) for b in boxes):
            logits, targets_low = [], []
            for i, (image_prompts, masks) in enumerate(zip(self.prompts(levels, boxes), gt_masks)):
                if len(image_prompts):
                    pred, _ = model.decode(embeddings[i:i + 1], image_prompts)
                    logits.append(pred)
                    targets_low.append(resize_masks(masks, pred.shape[-1]))
            pred, gt = torch.cat(logits).float(), torch.cat(targets_low)
            loss["mask_bce"] = 5.0 * bce_loss(pred, gt)
            loss["mask_dice"] = 5.0 * dice_loss(pred, gt)
        return loss

    def detect(self, levels: dict[str, torch.Tensor]) -> list[dict]:
        return detect_in_float32(self.rpn, self.roi_heads, levels, self.image_size)[1]

    @torch.no_grad()
    def predict(self, model, features, embeddings, score_threshold: float = 0.05) -> list[dict]:
        levels = self.levels(features)
        detections = self.detect(levels)
        keeps = [d["scores"] >= score_threshold for d in detections]
        prompts = self.prompts(levels, [d["boxes"][keep] for d, keep in zip(detections, keeps)])
        results = []
        for i, (detection, keep, image_prompts) in enumerate(zip(detections, keeps, prompts)):
            masks, _ = model.decode(embeddings[i:i + 1], image_prompts)
            results.append({"masks": masks, "scores": detection["scores"][keep], "labels": detection["labels"][keep],
                            "boxes": detection["boxes"][keep]})
        return results
