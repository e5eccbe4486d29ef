"""SAM's own promptable training (Kirillov et al. 2023, appendix A) as an objective of the training loop.

Per image, a random subset of its ground-truth instances is prompted either with jittered ground-truth boxes or
with positive points inside each mask; then ``correction_rounds`` corrective clicks follow, each drawn uniformly
from the region where the previous prediction is wrong (positive in a false negative, negative in a false
positive), with the previous low-res logits fed back as the mask prompt. Every round is supervised: focal and
dice on the mask (20 : 1), MSE of the predicted IoU against the true one; a single-point prompt gets SAM's three
masks and only the one with the lowest mask loss is trained (the IoU head learns all three). The loss is taken on
SAM's low-res logit grid (a quarter of the input) against masks area-resized to it and thresholded, or, with
``loss_at="input"``, on the logits upsampled to the input as ``SamPredictor`` upsamples them for its answer,
against the masks themselves: objects a few grid cells wide (vehicles, storage tanks in overhead images) then learn
boundaries between the cells instead of a blocky outline.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torchvision.ops import sigmoid_focal_loss

from sam_distill.core.errors import DistillError
from sam_distill.sam.prompts import decode_image, error_points, jitter_boxes, points_inside
from sam_distill.students.heads.losses import dice_loss, resize_masks
from sam_distill.students.lora import ATTENTION_PROJECTIONS, adapt_encoder, merge_lora
from sam_distill.train.loop import Objective


class PromptableSam(nn.Module):
    """A segment-anything ``Sam`` with what trains marked: its image encoder frozen, adapted by LoRA or fully
    trained; its prompt encoder trained or not; its mask decoder trained, frozen, or (``train_decoder="iou_head"``)
    frozen but for the MLP that predicts each mask's IoU. That MLP reads the decoder's IoU token after the
    transformer and feeds nothing back, so training it alone leaves every mask bit for bit as it was and changes
    only the scores that rank them. An encoder that is not fully trained stays in inference mode, so TinyViT's batch
    norms keep their statistics."""

    def __init__(self, sam: Sam, train_encoder: str = "lora", train_prompt_encoder: bool = True,
                 train_decoder: bool | str = True, lora_rank: int = 8, lora_alpha: float = 8.0,
                 lora_targets: tuple[str, ...] = ATTENTION_PROJECTIONS):
        super().__init__()
        self.sam, self.train_encoder = sam, train_encoder
        self.adapted = adapt_encoder(sam.image_encoder, train_encoder, lora_rank, lora_alpha, tuple(lora_targets),
                                     "finetune.lora_targets")
        sam.prompt_encoder.requires_grad_(train_prompt_encoder)
        sam.mask_decoder.requires_grad_(train_decoder is True)
        if train_decoder == "iou_head":
            sam.mask_decoder.iou_prediction_head.requires_grad_(True)
        if not any(p.requires_grad for p in self.parameters()):
            raise DistillError("finetune: nothing would train (encoder frozen, prompt encoder and decoder frozen); "
                               "set finetune.train_encoder, train_prompt_encoder or train_decoder")

    @property
    def image_size(self) -> int:
        return int(self.sam.image_encoder.img_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.sam.image_encoder.train(mode and self.train_encoder == "full")
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        with nullcontext() if self.train_encoder != "frozen" and torch.is_grad_enabled() else torch.no_grad():
            return self.sam.image_encoder(images)

    def merged(self) -> Sam:
        """The plain SAM with the adapters folded into its weights (in place: the adapters are gone after)."""
        merge_lora(self.sam.image_encoder)
        self.adapted = []
        return self.sam


def sam_mask_losses(logits: torch.Tensor, iou_predictions: torch.Tensor, targets: torch.Tensor,
                    focal_weight: float = 20.0, dice_weight: float = 1.0,
                    iou_weight: float = 1.0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """SAM's loss for n prompts with M outputs each: logits n×M×h×w, predicted IoU n×M, binary targets n×h×w.

    Returns per-prompt weighted terms (``mask_focal``, ``mask_dice`` of the output with the lowest mask loss,
    ``iou_mse`` over all outputs) and the index of that best output."""
    logits = logits.float()
    n, outputs = logits.shape[:2]
    expanded = targets.float()[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, expanded, reduction="none").flatten(2).mean(-1)
    dice = dice_loss(logits.flatten(0, 1), expanded.flatten(0, 1), reduction="none").view(n, outputs)
    best = (focal_weight * focal + dice_weight * dice).argmin(1)
    rows = torch.arange(n, device=logits.device)
    with torch.no_grad():
        predicted = logits > 0
        truth = expanded > 0.5
        intersection = (predicted & truth).flatten(2).sum(-1).float()
        union = (predicted | truth).flatten(2).sum(-1).float()
        true_iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))
    iou_mse = F.mse_loss(iou_predictions.float(), true_iou, reduction="none").mean(1)
    return {"mask_focal": focal_weight * focal[rows, best], "mask_dice": dice_weight * dice[rows, best],
            "iou_mse": iou_weight * iou_mse}, best


@dataclass
class PromptSampling:
    """How the prompts of one step are drawn (the ``finetune:`` keys of the same names)."""

    masks_per_image: int = 8
    box_probability: float = 0.5
    max_points: int = 1
    box_noise: float = 0.1
    box_noise_max: float = 20.0
    correction_rounds: int = 2


@dataclass
class LossWeights:
    """SAM's loss terms and the resolution they are taken at (the ``finetune:`` keys of the same names)."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    loss_at: str = "low_res"


class FineTuneObjective(Objective):
    """Batches of ``CocoInstances`` items; the prompts come from the objective's own seeded generator, whose
    state travels in the checkpoint. ``evaluate`` (the ground-truth mIoU protocols) runs every ``eval_every``
    steps into miou.csv."""

    name = "finetune"
    loss_names = ("mask_focal", "mask_dice", "iou_mse")
    unit = "images"
    eval_csv = "miou.csv"
    find_unused_parameters = True  # a step of boxes only leaves the point and multimask weights without gradient

    def __init__(self, model: PromptableSam, sampling: PromptSampling | None = None,
                 weights: LossWeights | None = None, seed: int = 0,
                 evaluate: Callable[[], dict] | None = None, eval_every: int | None = None):
        super().__init__(model)
        self.sampling, self.weights = sampling or PromptSampling(), weights or LossWeights()
        self.generator = torch.Generator().manual_seed(seed)
        self.scorer = evaluate
        self.eval_every = eval_every if evaluate is not None else None

    def collate(self, items: list[dict]) -> tuple[torch.Tensor, list[dict]]:
        return torch.stack([item["image"] for item in items]), [
            {"masks": item["masks"], "boxes": item["boxes"], "input_size": tuple(item["input_size"])} for item in items]

    def random_state(self) -> dict:
        return {"prompts": self.generator.get_state()}

    def set_random_state(self, state: dict) -> None:
        self.generator.set_state(state["prompts"])

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen parameters (buffers included: they are small)."""
        frozen = {name for name, p in self.model.named_parameters() if not p.requires_grad}
        return {k: v for k, v in self.model.state_dict().items() if k not in frozen}

    def evaluate(self) -> dict[str, float]:
        return self.scorer()

    def losses(self, model: PromptableSam, batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        embeddings = model.embed(images)
        totals = {name: embeddings.new_zeros(()) for name in self.loss_names}
        count = 0
        for index, target in enumerate(targets):
            if len(target["masks"]) == 0:
                continue
            for values in self._image_losses(model.sam, embeddings[index : index + 1], target):
                for name in self.loss_names:
                    totals[name] = totals[name] + values[name].sum()
                count += len(values["iou_mse"])
        if count == 0:  # no instance in the whole batch: a zero that still reaches every trainable weight
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return {name: zero for name in self.loss_names}
        return {name: total / count for name, total in totals.items()}

    def _image_losses(self, sam: Sam, embedding: torch.Tensor, target: dict) -> list[dict[str, torch.Tensor]]:
        """The loss terms of every round of one image's prompts (one entry per round, one value per prompt)."""
        sampling, generator, device = self.sampling, self.generator, embedding.device
        image_size = int(sam.image_encoder.img_size)
        masks = target["masks"]
        chosen = torch.randperm(len(masks), generator=generator)[: sampling.masks_per_image].to(masks.device)
        masks = masks[chosen]
        low_res = resize_masks(masks, image_size // 4)
        at_input = self.weights.loss_at == "input"
        loss_targets = masks.float() if at_input else low_res
        boxes, points = None, None
        if float(torch.rand((), generator=generator)) < sampling.box_probability:
            boxes = jitter_boxes(target["boxes"][chosen].float(), target["input_size"], generator,
                                 sampling.box_noise, sampling.box_noise_max).to(device)
        else:
            count = int(torch.randint(1, sampling.max_points + 1, (), generator=generator))
            coords = points_inside(masks, count, generator).to(device)
            points = (coords, torch.ones(coords.shape[:2], device=device))
        rounds, previous = [], None
        for correction in range(sampling.correction_rounds + 1):
            multimask = correction == 0 and boxes is None and points[0].shape[1] == 1
            logits, iou = decode_image(sam, embedding, points, boxes, previous, multimask)
            scored = F.interpolate(logits, size=(image_size, image_size), mode="bilinear",
                                   align_corners=False) if at_input else logits
            values, best = sam_mask_losses(scored, iou, loss_targets, self.weights.focal, self.weights.dice,
                                           self.weights.iou)
            rounds.append(values)
            if correction == sampling.correction_rounds:
                break
            previous = logits[torch.arange(len(logits), device=device), best][:, None].detach()
            clicks, labels = error_points(previous.cpu(), low_res[:, None].cpu() > 0.5, image_size, generator)
            clicks, labels = clicks.to(device), labels.to(device)
            points = (clicks, labels) if points is None else \
                (torch.cat([points[0], clicks], 1), torch.cat([points[1], labels], 1))
        return rounds
