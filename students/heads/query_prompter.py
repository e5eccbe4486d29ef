"""Query-based prompter, as RSPrompter-query builds it: a Mask2Former head (``Mask2FormerHead``: transformers'
pixel decoder and masked-attention decoder on a simple pyramid of the aggregated map); after every decoder layer
each query gives class logits (C + no-object), K sin-cos prompt embeddings for SAM's mask decoder and
Mask2Former's own coarse mask, which SAM receives as its dense mask prompt (the authors' ``decoder_plus``).
Training matches queries to objects (Hungarian, on class + coarse-mask BCE + Dice) at every layer and sums every
layer's losses (class, coarse mask, SAM's mask), as Mask2Former's auxiliary losses do."""
from __future__ import annotations

import torch
import torch.nn as nn

from sam_distill.students.heads import HEADS
from sam_distill.students.heads.losses import bce_loss, dice_loss
from sam_distill.students.heads.mask2former import Mask2FormerHead, add_losses, mlp

PROMPT_DIM = 256


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
        width = PROMPT_DIM * (2 if self.sincos else 1)  # spelled out: -1 is ambiguous when no object is found
        raw = self.mlp(features).reshape(*features.shape[:-1], self.prompts, width)
        return sin_cos(raw) if self.sincos else raw


@HEADS.register("query")
class QueryPrompter(nn.Module):
    def __init__(self, width: int, num_classes: int, num_queries: int = 16, prompts_per_object: int = 5,
                 decoder_layers: int = 6, pixel_decoder: str = "deformable", pixel_decoder_layers: int = 3,
                 heads: int = 8, no_object_weight: float = 0.1,
                 cost_weights: tuple[float, float, float] = (2.0, 5.0, 5.0), sincos: bool = True,
                 dense_prompt: bool = True, **_unused):
        super().__init__()
        self.num_classes, self.num_queries, self.prompts_per_object = num_classes, num_queries, prompts_per_object
        self.dense_prompt = dense_prompt
        self.mask2former = Mask2FormerHead(width, width, num_classes, num_queries, decoder_layers, pixel_decoder,
                                           pixel_decoder_layers, heads, no_object_weight, cost_weights)
        self.prompt_head = PromptHead(width, width, prompts_per_object, sincos)

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """B×W×G×G map → per decoder layer (the first before any layer, the last the answer): class logits
        B×N×(C+1), prompt embeddings B×N×K×256 and coarse mask logits B×N×4G×4G (stride 4, SAM's mask-prompt
        size)."""
        return [(logits, self.prompt_head(queries), coarse) for logits, queries, coarse in self.mask2former(features)]

    def sam_masks(self, model, embedding: torch.Tensor, prompts: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """SAM's low-res masks for one image's queries: their sparse prompts, and their coarse masks as the dense
        prompt (detached, as the authors do: SAM's answer does not train Mask2Former's mask branch)."""
        masks, _ = model.decode(embedding, prompts, coarse.detach() if self.dense_prompt else None)
        return masks

    def losses(self, model, features, embeddings, targets) -> dict[str, torch.Tensor]:
        _, w_bce, w_dice = self.mask2former.cost_weights
        loss: dict[str, torch.Tensor] = {}
        for logits, prompts, coarse in self(features):  # every decoder layer: Mask2Former's auxiliary losses
            layer, matches = self.mask2former.layer_losses(logits, coarse, targets, mask_name="coarse")
            if matches:  # SAM's masks from the matched queries' prompts, against the same objects
                pred = torch.cat([self.sam_masks(model, embeddings[i:i + 1], prompts[i, rows], coarse[i, rows])
                                  for i, rows, _, _ in matches]).float()
                gt = torch.cat([gt[cols] for _, _, cols, gt in matches])
                layer.update(mask_bce=w_bce * bce_loss(pred, gt), mask_dice=w_dice * dice_loss(pred, gt))
            add_losses(loss, layer)
        return loss

    @torch.no_grad()
    def predict(self, model, features, embeddings, score_threshold: float = 0.05) -> list[dict]:
        logits, prompts, coarse = self(features)[-1]
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        results = []
        for i in range(features.shape[0]):
            keep = scores[i] >= score_threshold
            masks = self.sam_masks(model, embeddings[i:i + 1], prompts[i][keep], coarse[i][keep])
            results.append({"masks": masks, "scores": scores[i][keep], "labels": labels[i][keep] + 1})
        return results
