"""Anchor-based prompter: torchvision's RPN and Fast R-CNN RoI heads on the aggregated map find and classify
boxes; a prompt head maps each RoI feature to K prompt embeddings, and SAM's own box encoding (the prompt
encoder's random-Fourier positions of the corners) is added so the prompts sit where SAM's decoder expects.
Losses: RPN + Fast R-CNN (torchvision's) + mask BCE/Dice on positive proposals (RSPrompter-anchor)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou, roi_align

from sam_distill.students.heads import HEADS
from sam_distill.students.heads.losses import bce_loss, dice_loss, resize_masks
from sam_distill.students.heads.query_prompter import PROMPT_DIM, mlp

ROI_SIZE = 7
STRIDE = 16


def padded_image_list(like: torch.Tensor, image_size: int) -> ImageList:
    """A batch of padded S×S inputs as torchvision's RPN sees them (it reads only their size)."""
    size = (image_size, image_size)
    return ImageList(like.new_zeros(like.shape[0], 1, *size), [size] * like.shape[0])


@HEADS.register("anchor")
class AnchorPrompter(nn.Module):
    def __init__(self, width: int, num_classes: int, image_size: int, prompts_per_object: int = 4,
                 masks_per_image: int = 16, detections_per_image: int = 50, **_unused):
        super().__init__()
        if prompts_per_object < 2:
            raise ValueError("the anchor prompter needs prompts_per_object >= 2 (two box-corner slots)")
        self.image_size, self.prompts_per_object, self.masks_per_image = image_size, prompts_per_object, masks_per_image
        sizes = tuple(max(4, image_size // d) for d in (32, 16, 8, 4, 2))
        anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
        self.rpn = RegionProposalNetwork(
            anchors, RPNHead(width, anchors.num_anchors_per_location()[0]), fg_iou_thresh=0.7, bg_iou_thresh=0.3,
            batch_size_per_image=256, positive_fraction=0.5, pre_nms_top_n=dict(training=1000, testing=300),
            post_nms_top_n=dict(training=300, testing=100), nms_thresh=0.7)
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(["0"], ROI_SIZE, 2), TwoMLPHead(width * ROI_SIZE ** 2, 256),
            FastRCNNPredictor(256, num_classes + 1), fg_iou_thresh=0.5, bg_iou_thresh=0.5,
            batch_size_per_image=128, positive_fraction=0.25, bbox_reg_weights=None, score_thresh=0.05,
            nms_thresh=0.5, detections_per_img=detections_per_image)
        self.prompt_head = nn.Sequential(nn.Flatten(), mlp(width * ROI_SIZE ** 2, 256, prompts_per_object * PROMPT_DIM))
        self.matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)

    def prompts(self, features: torch.Tensor, boxes: list[torch.Tensor], box_embedding) -> list[torch.Tensor]:
        """K prompt embeddings per box: RoI feature through the prompt head, plus SAM's corner encoding."""
        pooled = roi_align(features, boxes, ROI_SIZE, spatial_scale=1 / STRIDE, sampling_ratio=2, aligned=True)
        prompts = self.prompt_head(pooled).reshape(-1, self.prompts_per_object, PROMPT_DIM)
        corners = box_embedding(torch.cat(boxes).detach())
        prompts = torch.cat([prompts[:, :2] + corners, prompts[:, 2:]], dim=1)
        return list(prompts.split([len(b) for b in boxes]))

    def losses(self, model, features, embeddings, targets) -> dict[str, torch.Tensor]:
        images, feature_dict = padded_image_list(features, self.image_size), OrderedDict([("0", features)])
        det_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
        proposals, rpn_losses = self.rpn(images, feature_dict, det_targets)
        _, det_losses = self.roi_heads(feature_dict, proposals, images.image_sizes, det_targets)
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
        loss = {**rpn_losses, **det_losses}
        if sum(len(b) for b in boxes):
            prompts = self.prompts(features, boxes, model.box_embedding)
            logits, targets_low = [], []
            for i, (image_prompts, masks) in enumerate(zip(prompts, gt_masks)):
                if len(image_prompts):
                    pred, _ = model.decode(embeddings[i:i + 1], image_prompts)
                    logits.append(pred)
                    targets_low.append(resize_masks(masks, pred.shape[-1]))
            pred, gt = torch.cat(logits).float(), torch.cat(targets_low)
            loss["mask_bce"] = 5.0 * bce_loss(pred, gt)
            loss["mask_dice"] = 5.0 * dice_loss(pred, gt)
        return loss

    def detect(self, features: torch.Tensor) -> list[dict]:
        images, feature_dict = padded_image_list(features, self.image_size), OrderedDict([("0", features)])
        proposals, _ = self.rpn(images, feature_dict)
        detections, _ = self.roi_heads(feature_dict, proposals, images.image_sizes)
        return detections

    @torch.no_grad()
    def predict(self, model, features, embeddings, score_threshold: float = 0.05) -> list[dict]:
        detections = self.detect(features)
        boxes = [d["boxes"][d["scores"] >= score_threshold] for d in detections]
        prompts = self.prompts(features, boxes, model.box_embedding)
        results = []
        for i, (detection, image_prompts) in enumerate(zip(detections, prompts)):
            keep = detection["scores"] >= score_threshold
            masks, _ = model.decode(embeddings[i:i + 1], image_prompts)
            results.append({"masks": masks, "scores": detection["scores"][keep], "labels": detection["labels"][keep],
                            "boxes": detection["boxes"][keep]})
        return results
