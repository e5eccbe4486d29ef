"""Prompts drawn from masks, and calls of SAM's prompt encoder + mask decoder.

Shared by EdgeSAM's prompt-in-the-loop training, the fidelity evaluation and SAM's own fine-tuning recipe, so
all sample prompts the same way: points inside the valid (unpadded) image or inside a mask, boxes around masks
(jittered as SAM's training does), corrective clicks in the region where a prediction is wrong.
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


def decode_image(sam: Sam, embedding: torch.Tensor, points: tuple[torch.Tensor, torch.Tensor] | None = None,
                 boxes: torch.Tensor | None = None, mask_input: torch.Tensor | None = None,
                 multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """n prompts on one image (``embedding`` 1×C×G×G) in one decoder call: low-res logits n×M×4G×4G, IoU n×M.

    ``mask_input`` (n×1×4G×4G) is the previous low-res logits fed back as SAM's mask prompt."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
    return sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                            multimask_output=multimask)


def best_mask(logits: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Pick the highest-scoring of SAM's multimask outputs (as SamPredictor users do)."""
    index = scores.argmax(dim=1)
    return logits[torch.arange(logits.shape[0]), index][:, None]


def random_points(count: int, valid_hw: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """``count`` points (x, y) uniformly inside the unpadded region of the model input."""
    h, w = valid_hw
    xy = torch.rand(count, 2, generator=generator)
    return xy * torch.tensor([w - 1, h - 1], dtype=torch.float32) + 0.5


def jitter_boxes(boxes: torch.Tensor, valid_hw: tuple[int, int], generator: torch.Generator,
                 fraction: float = 0.1, max_pixels: float = 20.0) -> torch.Tensor:
    """SAM's box prompts in training: each coordinate moved by Gaussian noise whose standard deviation is
    ``fraction`` of the box side, at most ``max_pixels``; the result stays inside the valid h×w region and at
    least one pixel wide and high."""
    h, w = valid_hw
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    noise = torch.randn(boxes.shape, generator=generator).to(boxes.device)
    moved = boxes + noise * (fraction * sides).clamp(max=max_pixels)
    limits = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    moved = torch.minimum(moved.clamp(min=0), limits)
    low = torch.minimum(moved[:, :2], limits[:2] - 1)
    return torch.cat([low, torch.maximum(moved[:, 2:], low + 1)], 1)


def points_inside(masks: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """n×count×2 points (x, y, pixel centres) drawn uniformly from each boolean n×H×W mask, with replacement.
    An empty mask draws from the whole frame, so a prompt always exists."""
    weights = masks.flatten(1).float().cpu()
    weights[weights.sum(1) == 0] = 1.0
    index = torch.multinomial(weights, count, replacement=True, generator=generator)
    width = masks.shape[-1]
    return torch.stack([index % width, index // width], -1).float() + 0.5


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
