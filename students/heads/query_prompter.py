"""Query-based prompter: N learned queries read the aggregated map through a small transformer decoder;
each query gives class logits (C + no-object) and K sparse prompt embeddings for SAM's mask decoder.
Trained with Hungarian matching on class, mask BCE and Dice costs (RSPrompter-query / Mask2Former)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

from sam_distill.students.heads import HEADS
from sam_distill.students.heads.losses import bce_loss, dice_loss, pairwise_mask_costs, resize_masks

PROMPT_DIM = 256


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1)
    parts: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        parts += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*parts, nn.Linear(dims[-1], out_dim))


def sin_cos(embedding: torch.Tensor) -> torch.Tensor:
    """RSPrompter's transform of an MLP's output (…×2D → …×D): ``sin(e[..., ::2]) + e[..., 1::2]``. SAM's prompt
    embeddings are sums of high-frequency sinusoids of positions; an MLP alone reaches them poorly, a sine does."""
    return torch.sin(embedding[..., ::2]) + embedding[..., 1::2]


class PromptHead(nn.Module):
    """Features (…×in) → K prompt embeddings of SAM's width (…×K×256), through an MLP and, with ``sincos`` (the
    paper's default), :func:`sin_cos` of twice as many outputs."""

    def __init__(self, in_dim: int, hidden: int, prompts: int, sincos: bool = True):
        super().__init__()
        self.prompts, self.sincos = prompts, sincos
        self.mlp = mlp(in_dim, hidden, prompts * PROMPT_DIM * (2 if sincos else 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        raw = self.mlp(features).reshape(*features.shape[:-1], self.prompts, -1)
        return sin_cos(raw) if self.sincos else raw


@HEADS.register("query")
class QueryPrompter(nn.Module):
    def __init__(self, width: int, num_classes: int, num_queries: int = 16, prompts_per_object: int = 4,
                 depth: int = 2, heads: int = 8, no_object_weight: float = 0.1,
                 cost_weights: tuple[float, float, float] = (2.0, 5.0, 5.0), sincos: bool = True, **_unused):
        super().__init__()
        self.num_classes, self.num_queries, self.prompts_per_object = num_classes, num_queries, prompts_per_object
        self.position = PositionEmbeddingRandom(width // 2)
        self.queries = nn.Embedding(num_queries, width)
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))
        self.class_head = nn.Linear(width, num_classes + 1)
        self.prompt_head = PromptHead(width, width, prompts_per_object, sincos)
        self.cost_weights = cost_weights
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×W×G×G map → class logits B×N×(C+1) and prompt embeddings B×N×K×256."""
        batch, _, height, width = features.shape
        memory = (features + self.position((height, width))[None]).flatten(2).transpose(1, 2)
        queries = self.decoder(self.queries.weight[None].expand(batch, -1, -1), memory)
        prompts = self.prompt_head(queries)
        return self.class_head(queries), prompts

    def losses(self, model, features, embeddings, targets) -> dict[str, torch.Tensor]:
        logits, prompts = self(features)
        w_class, w_bce, w_dice = self.cost_weights
        class_targets = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        matched_logits, matched_masks = [], []
        for i, target in enumerate(targets):
            masks, _ = model.decode(embeddings[i:i + 1], prompts[i])
            gt = resize_masks(target["masks"], masks.shape[-1])
            labels = target["labels"] - 1
            if len(labels) == 0:
                continue
            with torch.no_grad():
                bce, dice = pairwise_mask_costs(masks, gt)
                cost = -w_class * logits[i].softmax(-1)[:, labels] + w_bce * bce + w_dice * dice
                rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
            rows, cols = torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)
            class_targets[i, rows] = labels[cols]
            matched_logits.append(masks[rows])
            matched_masks.append(gt[cols])
        loss = {"class": w_class * F.cross_entropy(logits.flatten(0, 1).float(), class_targets.flatten(),
                                                   weight=self.class_weights)}
        if matched_logits:
            pred, gt = torch.cat(matched_logits), torch.cat(matched_masks)
            loss["mask_bce"] = w_bce * bce_loss(pred.float(), gt)
            loss["mask_dice"] = w_dice * dice_loss(pred.float(), gt)
        return loss

    @torch.no_grad()
    def predict(self, model, features, embeddings, score_threshold: float = 0.05) -> list[dict]:
        logits, prompts = self(features)
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        results = []
        for i in range(features.shape[0]):
            keep = scores[i] >= score_threshold
            masks, _ = model.decode(embeddings[i:i + 1], prompts[i][keep])
            results.append({"masks": masks, "scores": scores[i][keep], "labels": labels[i][keep] + 1})
        return results
