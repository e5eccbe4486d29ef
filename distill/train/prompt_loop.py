"""EdgeSAM's prompt-in-the-loop distillation as an objective of the training loop.

Per image, the first prompts of a round are drawn as EdgeSAM draws them from SA-1B's masks when the batch carries
ground-truth instance masks (a dataset with annotations): a point inside an instance, or its box, one instance
each. Without annotations they are random points anywhere in the image, then boxes around the teacher's masks
for those points. Student and teacher encoder outputs go through the same frozen prompt
encoder and mask decoder; the student's mask logits are pulled towards the teacher's masks with
BCE + Dice. ``refine_iterations`` adds EdgeSAM's extra points from the region where they disagree.
With ``multimask`` a single-click prompt is also answered with SAM's three multimask outputs, each matched to the
teacher's: those are what ``SamPredictor`` returns for one click (the single-mask output answers boxes and several
points), so without them the one-click answers are never distilled. EdgeSAM distils every mask token too
(``MULTIMASK_OUTPUT: 4`` in its prompt-in-the-loop config). ``iou_weight`` adds, for those three outputs, the MSE
between the IoU scores the frozen decoder predicts from the student's features and from the teacher's:
``SamPredictor`` keeps the one-click mask with the highest score, so a student whose three masks are good but
whose scores rank them otherwise than the teacher's answers a click with the wrong mask. The weight 1 is SAM's own
for its IoU head's MSE; EdgeSAM's training code has the same term (``DECODER_IOU``), off in its released config.
``embedding_weight`` keeps MobileSAM's MSE to the teacher's cached outputs as a term (EdgeSAM's ``PIXEL_WISE``): the
mask terms alone let a distilled student's embedding drift from the teacher's, and the frozen decoder only knows
the teacher's.
``train_decoder`` is EdgeSAM's ``enc_dec`` variant: the student (a ``StudentWithDecoder``) carries its own copy of the
teacher's mask decoder, trained with the encoder, so the decoder can learn to read a small encoder's embedding
instead of the encoder having to reproduce one that only the teacher's decoder reads well; the prompt encoder stays
the teacher's, frozen (SAM teachers only).
The teacher's heavy encoder is not rerun: its outputs come from the cache, its decoder runs online. Any teacher
family works: SAM's embedding, or SAM 2's and HQ-SAM's named outputs, decoded by ``Teacher.decode``.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import default_collate

from sam_distill.sam.prompts import decode_image, error_points, mask_boxes, points_inside, random_points
from sam_distill.sam.teachers import Teacher
from sam_distill.students.heads.losses import dice_loss
from sam_distill.train.loop import Objective


class StudentWithDecoder(nn.Module):
    """A student encoder with its own mask decoder (a trainable copy of the teacher's). ``forward`` is the encoder,
    as for a bare student; the names match a segment-anything ``Sam``'s, so the state loads into one."""

    def __init__(self, image_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder
        self.mask_decoder = copy.deepcopy(mask_decoder).requires_grad_(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


class PromptLoopObjective(Objective):
    """Trains ``student`` (an image encoder) on batches of (image, cached teacher outputs). The prompts come
    from the objective's own seeded generator, whose state travels in the checkpoint."""

    name = "prompt_loop"
    loss_names = ("mask_bce", "mask_dice")

    def __init__(self, student: nn.Module, teacher: Teacher, prompts_per_image: int = 4, refine_iterations: int = 1,
                 seed: int = 0, multimask: bool = True, iou_weight: float = 0.0, embedding_weight: float = 0.0):
        super().__init__(student)
        self.teacher = teacher
        for p in teacher.model.parameters():
            p.requires_grad_(False)
        self.prompts_per_image = prompts_per_image
        self.refine_iterations = refine_iterations
        self.multimask = multimask
        self.iou_weight = iou_weight
        self.embedding_weight = embedding_weight
        if multimask and iou_weight > 0:
            self.loss_names = (*self.loss_names, "iou_mse")
        if embedding_weight > 0:
            self.loss_names = (*self.loss_names, "embedding_mse")
        self.generator = torch.Generator().manual_seed(seed)

    def _teacher(self, features, multimask: bool = False, **prompt) -> tuple[torch.Tensor, torch.Tensor]:
        # The same output (single-mask or the three multimask ones) for teacher and student alike, so both answer
        # the same question.
        with torch.no_grad():
            return self.teacher.decode(features, multimask=multimask, **prompt)

    def _student(self, student: nn.Module, features, multimask: bool = False, **prompt):
        """The student's answer: through its own decoder when it has one, else the teacher's frozen decoder."""
        if isinstance(student, StudentWithDecoder):
            view = SimpleNamespace(prompt_encoder=self.teacher.model.prompt_encoder, mask_decoder=student.mask_decoder)
            return decode_image(view, features, multimask=multimask, **prompt)
        return self.teacher.decode(features, multimask=multimask, **prompt)

    def random_state(self) -> dict:
        return {"prompts": self.generator.get_state()}

    def set_random_state(self, state: dict) -> None:
        self.generator.set_state(state["prompts"])

    def collate(self, items: list):
        """Images and teacher outputs stacked; ground-truth masks (a different count per image) as a list."""
        if len(items[0]) == 2:
            return default_collate(items)
        images, outputs = default_collate([item[:2] for item in items])
        return images, outputs, [item[2] for item in items]

    def _initial_prompts(self, images: torch.Tensor, b: int, t_feat, instance_masks: torch.Tensor | None
                         ) -> list[dict]:
        """The round's first prompts for image ``b``: a point set and a box set (``prompts_per_image`` in all)."""
        n, image_size, device = self.prompts_per_image, images.shape[-1], images.device
        if instance_masks is not None and len(instance_masks):
            chosen = torch.randperm(len(instance_masks), generator=self.generator)[:n]
            masks = instance_masks[chosen.to(instance_masks.device)]
            # A single instance is asked by point or by box, a coin deciding; more are split half and half.
            points_count = len(masks) // 2 if len(masks) > 1 else int(torch.rand((), generator=self.generator) < 0.5)
            prompt_sets = []
            if points_count:
                coords = points_inside(masks[:points_count], 1, self.generator).to(device)
                prompt_sets.append(dict(points=(coords, torch.ones(points_count, 1, device=device))))
            if points_count < len(masks):
                prompt_sets.append(dict(boxes=mask_boxes(masks[points_count:], image_size).to(device)))
            return prompt_sets
        # Valid region: SAM pads bottom-right with zeros after normalising; find it from the input.
        valid = images[b].abs().sum(0) > 0
        h = int(valid.any(1).nonzero().max()) + 1 if valid.any() else image_size
        w = int(valid.any(0).nonzero().max()) + 1 if valid.any() else image_size
        coords = random_points(n, (h, w), self.generator).to(device)[:, None]
        labels = torch.ones(n, 1, device=device)
        point_masks = self._teacher(t_feat, points=(coords, labels))[0] > 0
        boxes = mask_boxes(point_masks.cpu(), image_size).to(device)
        half = n // 2
        prompt_sets = [dict(points=(coords[:half or n], labels[:half or n]))]
        if half:
            prompt_sets.append(dict(boxes=boxes[half:]))
        return prompt_sets

    def losses(self, student: nn.Module, batch) -> dict[str, torch.Tensor]:
        images, teacher_outputs = batch[:2]
        instance_masks = batch[2] if len(batch) > 2 else None
        image_size = images.shape[-1]
        device = images.device
        self.teacher.to(device)
        student_outputs = student(images)
        bce, dice, terms = 0.0, 0.0, 0
        iou_mse, iou_terms = 0.0, 0
        for b in range(images.shape[0]):
            s_feat, t_feat = image_row(student_outputs, b), image_row(teacher_outputs, b)
            prompt_sets = self._initial_prompts(images, b, t_feat,
                                                instance_masks[b] if instance_masks is not None else None)
            for prompt in prompt_sets:
                if self.multimask and "boxes" not in prompt and prompt["points"][0].shape[1] == 1:
                    teacher_logits, teacher_scores = self._teacher(t_feat, multimask=True, **prompt)
                    targets = teacher_logits.flatten(0, 1) > 0
                    logits, scores = self._student(student, s_feat, multimask=True, **prompt)
                    logits = logits.flatten(0, 1)[:, None]
                    if "iou_mse" in self.loss_names:
                        iou_mse = iou_mse + F.mse_loss(scores.float(), teacher_scores.float())
                        iou_terms += 1
                    bce = bce + F.binary_cross_entropy_with_logits(logits, targets[:, None].float())
                    dice = dice + dice_loss(logits, targets[:, None].float())
                    terms += 1
                target = self._teacher(t_feat, **prompt)[0] > 0
                for iteration in range(self.refine_iterations + 1):
                    logits, _ = self._student(student, s_feat, **prompt)
                    target_f = target.float()
                    bce = bce + F.binary_cross_entropy_with_logits(logits, target_f)
                    dice = dice + dice_loss(logits, target_f)
                    terms += 1
                    if iteration == self.refine_iterations:
                        break
                    extra, extra_labels = error_points(logits.detach().cpu(), target.cpu(), image_size, self.generator)
                    extra, extra_labels = extra.to(device), extra_labels.to(device)
                    if "points" in prompt:
                        points = (torch.cat([prompt["points"][0], extra], 1),
                                  torch.cat([prompt["points"][1], extra_labels], 1))
                    else:
                        points = (extra, extra_labels)
                    prompt = dict(prompt, points=points)
                    target = self._teacher(t_feat, **prompt)[0] > 0
        losses = {"mask_bce": bce / max(terms, 1), "mask_dice": dice / max(terms, 1)}
        if "iou_mse" in self.loss_names:
            # A batch whose prompts held no single click still returns the term, as a zero tied to the graph.
            losses["iou_mse"] = self.iou_weight * (iou_mse / iou_terms if iou_terms else 0.0 * losses["mask_bce"])
        if "embedding_mse" in self.loss_names:
            losses["embedding_mse"] = self.embedding_weight * outputs_mse(student_outputs, teacher_outputs)
        return losses


def outputs_mse(student_outputs, teacher_outputs) -> torch.Tensor:
    """The decoupled stage's MSE: on SAM's embedding, or summed over SAM 2's and HQ-SAM's named outputs."""
    if isinstance(teacher_outputs, dict):
        return sum(F.mse_loss(student_outputs[name].float(), target.float()) for name, target in teacher_outputs.items())
    return F.mse_loss(student_outputs.float(), teacher_outputs.float())


def image_row(outputs: torch.Tensor | dict[str, torch.Tensor], index: int):
    """One image's encoder outputs, batch dimension kept: a SAM embedding, or each of a SAM 2 / HQ-SAM output."""
    if isinstance(outputs, dict):
        return {name: value[index:index + 1] for name, value in outputs.items()}
    return outputs[index:index + 1]
