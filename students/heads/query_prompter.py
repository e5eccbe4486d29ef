"""Query-based prompter, as RSPrompter-query builds it: a Mask2Former head on a simple pyramid of the aggregated
map. Mask2Former's pixel decoder (multi-scale deformable attention, or the plain pyramid for speed) and its
masked-attention transformer decoder come from transformers; after every decoder layer each query gives class
logits (C + no-object), K sin-cos prompt embeddings for SAM's mask decoder and Mask2Former's own coarse mask,
which SAM receives as its dense mask prompt (the authors' ``decoder_plus``). Training matches queries to objects
(Hungarian, on class + coarse-mask BCE + Dice) at every layer and sums every layer's losses (class, coarse mask,
SAM's mask), as Mask2Former's auxiliary losses do."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam_distill.students.heads import HEADS
from sam_distill.students.heads.losses import bce_loss, dice_loss, pairwise_mask_costs, resize_masks
from sam_distill.students.heads.pyramid import SimpleFeaturePyramid

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


PIXEL_DECODERS = ("deformable", "pyramid")


def mask2former_modules(width: int, num_queries: int, decoder_layers: int, pixel_decoder_layers: int, heads: int,
                        pixel_decoder: str) -> tuple[nn.Module | None, nn.Module]:
    """transformers' Mask2Former pixel decoder (None for ``pyramid``: the pyramid's levels are used as they are)
    and transformer module (queries, level embeddings, masked-attention decoder, per-layer mask predictor)."""
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former import modeling_mask2former as m2f

    if pixel_decoder not in PIXEL_DECODERS:
        raise ValueError(f"pixel_decoder must be one of {', '.join(PIXEL_DECODERS)}, got {pixel_decoder!r}")
    config = Mask2FormerConfig(  # decoder_layers counts the prediction before the first layer, as Mask2Former does
        feature_size=width, mask_feature_size=width, hidden_dim=width, num_queries=num_queries,
        decoder_layers=decoder_layers + 1, encoder_layers=pixel_decoder_layers, num_attention_heads=heads,
        dim_feedforward=4 * width, encoder_feedforward_dim=4 * width, feature_strides=[4, 8, 16, 32],
        common_stride=4, dropout=0.0)
    pixels = m2f.Mask2FormerPixelDecoder(config, [width] * 4) if pixel_decoder == "deformable" else None
    transformer = m2f.Mask2FormerTransformerModule(width, config)
    # transformers initialises these in its PreTrainedModel (the pixel decoder's level embedding is even left as
    # uninitialised memory until then); used on their own, they get the same initialisation here.
    initialised = (m2f.Mask2FormerTransformerModule, m2f.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
                   m2f.Mask2FormerMaskedAttentionDecoderLayer, m2f.Mask2FormerPixelDecoder,
                   m2f.Mask2FormerPredictionBlock, nn.Embedding)
    holder = SimpleNamespace(config=config)
    for part in (pixels, transformer):
        for module in part.modules() if part is not None else ():
            if isinstance(module, initialised):
                m2f.Mask2FormerPreTrainedModel._init_weights(holder, module)
    return pixels, transformer


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
        self.pyramid = SimpleFeaturePyramid(width, width)
        self.pixel_decoder, self.transformer = mask2former_modules(width, num_queries, decoder_layers,
                                                                   pixel_decoder_layers, heads, pixel_decoder)
        self.class_head = mlp(width, width, num_classes + 1, layers=2)
        self.prompt_head = PromptHead(width, width, prompts_per_object, sincos)
        self.cost_weights = cost_weights
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """B×W×G×G map → per decoder layer (the first before any layer, the last the answer): class logits
        B×N×(C+1), prompt embeddings B×N×K×256 and coarse mask logits B×N×4G×4G (stride 4, SAM's mask-prompt
        size)."""
        levels = self.pyramid(features)
        if self.pixel_decoder is not None:
            decoded = self.pixel_decoder([levels[name] for name in ("0", "1", "2", "3")], return_dict=True)
            mask_features, scales = decoded.mask_features, list(decoded.multi_scale_features)
        else:
            mask_features, scales = levels["0"], [levels["3"], levels["2"], levels["1"]]
        decoded = self.transformer(scales, mask_features)
        return [(self.class_head(hidden.transpose(0, 1)), self.prompt_head(hidden.transpose(0, 1)), coarse)
                for hidden, coarse in zip(decoded.intermediate_hidden_states, decoded.masks_queries_logits)]

    def sam_masks(self, model, embedding: torch.Tensor, prompts: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """SAM's low-res masks for one image's queries: their sparse prompts, and their coarse masks as the dense
        prompt (detached, as the authors do: SAM's answer does not train Mask2Former's mask branch)."""
        masks, _ = model.decode(embedding, prompts, coarse.detach() if self.dense_prompt else None)
        return masks

    def match(self, logits: torch.Tensor, coarse: torch.Tensor, gt: torch.Tensor, labels: torch.Tensor):
        """Hungarian matching of one image's queries to its objects on class + coarse-mask BCE + Dice costs."""
        w_class, w_bce, w_dice = self.cost_weights
        with torch.no_grad():
            bce, dice = pairwise_mask_costs(coarse, gt)
            cost = -w_class * logits.softmax(-1)[:, labels] + w_bce * bce + w_dice * dice
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
        return torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)

    def losses(self, model, features, embeddings, targets) -> dict[str, torch.Tensor]:
        w_class, w_bce, w_dice = self.cost_weights
        loss: dict[str, torch.Tensor] = {}

        def add(name: str, value: torch.Tensor) -> None:
            loss[name] = loss[name] + value if name in loss else value

        for logits, prompts, coarse in self(features):  # every decoder layer: Mask2Former's auxiliary losses
            class_targets = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
            matched = {"coarse": [], "sam": [], "gt": []}
            for i, target in enumerate(targets):
                labels = target["labels"] - 1
                if len(labels) == 0:
                    continue
                gt = resize_masks(target["masks"], coarse.shape[-1])
                rows, cols = self.match(logits[i], coarse[i], gt, labels)
                class_targets[i, rows] = labels[cols]
                matched["coarse"].append(coarse[i, rows])
                matched["sam"].append(self.sam_masks(model, embeddings[i:i + 1], prompts[i, rows], coarse[i, rows]))
                matched["gt"].append(gt[cols])
            add("class", w_class * F.cross_entropy(logits.flatten(0, 1).float(), class_targets.flatten(),
                                                   weight=self.class_weights))
            if matched["gt"]:
                gt = torch.cat(matched["gt"])
                for name, key in (("coarse", "coarse"), ("mask", "sam")):
                    pred = torch.cat(matched[key]).float()
                    add(f"{name}_bce", w_bce * bce_loss(pred, gt))
                    add(f"{name}_dice", w_dice * dice_loss(pred, gt))
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
