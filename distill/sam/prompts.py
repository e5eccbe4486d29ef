"""Prompts drawn from a teacher's masks, and one call of SAM's prompt encoder + mask decoder.

Shared by EdgeSAM's prompt-in-the-loop training and by the fidelity evaluation, so both sample
prompts the same way: points inside the valid (unpadded) image, boxes around the teacher's masks.
"""
from __future__ import annotations

import torch
from segment_anything.modeling import Sam


def decode(sam: Sam, embeddings: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
           boxes: torch.Tensor | None = None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits (B×M×S/4×S/4) and IoU scores for one prompt set per embedding row.

    Coordinates are in the padded model-input frame (0..image_size).
    """
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    masks, scores = [], []
    for i in range(embeddings.shape[0]):
        low_res, iou = sam.mask_decoder(
            image_embeddings=embeddings[i : i + 1],
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse[i : i + 1],
            dense_prompt_embeddings=dense[i : i + 1],
            multimask_output=multimask,
        )
        masks.append(low_res)
        scores.append(iou)
    return torch.cat(masks), torch.cat(scores)


def best_mask(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Pick the highest-scoring of SAM's multimask outputs (as SamPredictor users do)."""
    index = scores.argmax(dim=1)
    return logits[torch.arange(logits.shape[0]), index][:, None]


def random_points(count: int, valid_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``count`` points (x, y) uniformly inside the unpadded region of the model input."""
    h, w = valid_hw
    xy = torch.rand(count, 2, generator=generator)
    return xy * torch.tensor([w - 1, h - 1], dtype=torch.float32) + 0.5


def mask_boxes(masks: torch.Tensor, image_size: int) -> torch.Tensor:
    """Tight (x0, y0, x1, y1) boxes of boolean low-res masks, in model-input coordinates.

    An empty mask gives the whole image, so a prompt always exists.
    """
    scale = image_size / masks.shape[-1]
    boxes = []
    for mask in masks.reshape(-1, *masks.shape[-2:]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(xs) == 0:
            boxes.append(torch.tensor([0.0, 0.0, image_size - 1.0, image_size - 1.0]))
        else:
            boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float() * scale)
    return torch.stack(boxes)


def error_points(student_logits: torch.Tensor, teacher_mask: torch.Tensor, image_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """EdgeSAM's refinement: one point per mask in the student/teacher disagreement region.

    The label is the teacher's (positive where the teacher says object). No disagreement: the
    point goes to the teacher mask's centre with a positive label.
    """
    scale = image_size / teacher_mask.shape[-1]
    wrong = (student_logits > 0) != teacher_mask
    coords, labels = [], []
    for i in range(teacher_mask.shape[0]):
        ys, xs = torch.nonzero(wrong[i, 0], as_tuple=True)
        if len(xs) == 0:
            ys, xs = torch.nonzero(teacher_mask[i, 0], as_tuple=True)
            if len(xs) == 0:
                ys, xs = torch.tensor([teacher_mask.shape[-2] // 2]), torch.tensor([teacher_mask.shape[-1] // 2])
        pick = torch.randint(len(xs), (1,), generator=generator).item()
        y, x = ys[pick].item(), xs[pick].item()
        coords.append([(x + 0.5) * scale, (y + 0.5) * scale])
        labels.append(1.0 if teacher_mask[i, 0, y, x] else 0.0)
    return torch.tensor(coords)[:, None], torch.tensor(labels)[:, None]
