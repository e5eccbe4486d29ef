"""Mask2Former on a SAM encoder's map, shared by RSPrompter-query (which turns each query into SAM prompts) and
SAM-seg's ``mask2former`` head (which keeps Mask2Former's own masks): a simple pyramid of the stride-16 map,
transformers' Mask2Former pixel decoder (multi-scale deformable attention, or the pyramid's levels as they are)
and masked-attention transformer decoder, a class head, and Mask2Former's training recipe: Hungarian matching
on class + mask BCE + Dice costs after every decoder layer, whose losses all count (auxiliary losses)."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from sam_distill.students.heads.losses import bce_loss, dice_loss, pairwise_mask_costs, resize_masks
from sam_distill.students.heads.pyramid import SimpleFeaturePyramid


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    dims = [in_dim] + [hidden] * (layers - 1)
    parts: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        parts += [nn.Linear(a, b), nn.ReLU(inplace=True)]
    return nn.Sequential(*parts, nn.Linear(dims[-1], out_dim))


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


class Mask2FormerHead(nn.Module):
    """B×C×G×G map → per decoder layer (the first before any layer, the last the answer): class logits
    B×N×(classes+1), query embeddings B×N×W and mask logits B×N×4G×4G (stride 4 of the input)."""

    def __init__(self, in_channels: int, width: int, num_classes: int, num_queries: int = 16, decoder_layers: int = 6,
                 pixel_decoder: str = "deformable", pixel_decoder_layers: int = 3, heads: int = 8,
                 no_object_weight: float = 0.1, cost_weights: tuple[float, float, float] = (2.0, 5.0, 5.0)):
        super().__init__()
        self.num_classes, self.num_queries, self.cost_weights = num_classes, num_queries, cost_weights
        self.pyramid = SimpleFeaturePyramid(in_channels, width)
        self.pixel_decoder, self.transformer = mask2former_modules(width, num_queries, decoder_layers,
                                                                   pixel_decoder_layers, heads, pixel_decoder)
        self.class_head = mlp(width, width, num_classes + 1, layers=2)
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        levels = self.pyramid(features)
        if self.pixel_decoder is not None:
            decoded = self.pixel_decoder([levels[name] for name in ("0", "1", "2", "3")], return_dict=True)
            mask_features, scales = decoded.mask_features, list(decoded.multi_scale_features)
        else:
            mask_features, scales = levels["0"], [levels["3"], levels["2"], levels["1"]]
        decoded = self.transformer(scales, mask_features)
        layers = []
        for hidden, masks in zip(decoded.intermediate_hidden_states, decoded.masks_queries_logits):
            queries = hidden.transpose(0, 1)
            layers.append((self.class_head(queries), queries, masks))
        return layers

    def match(self, logits: torch.Tensor, masks: torch.Tensor, gt: torch.Tensor, labels: torch.Tensor):
        """Hungarian matching of one image's queries (rows) to its objects (columns) on class + mask costs."""
        w_class, w_bce, w_dice = self.cost_weights
        with torch.no_grad():
            bce, dice = pairwise_mask_costs(masks, gt)
            cost = -w_class * logits.softmax(-1)[:, labels] + w_bce * bce + w_dice * dice
            rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
        return torch.as_tensor(rows, device=logits.device), torch.as_tensor(cols, device=logits.device)

    def assign(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict]):
        """One layer's matching over the batch: (class targets B×N, the no-object class where unmatched; per image
        with objects (index, matched query rows, matched object columns, its object masks on the mask grid))."""
        class_targets = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        matches = []
        for i, target in enumerate(targets):
            labels = target["labels"] - 1
            if len(labels) == 0:
                continue
            gt = resize_masks(target["masks"], masks.shape[-1])
            rows, cols = self.match(logits[i], masks[i], gt, labels)
            class_targets[i, rows] = labels[cols]
            matches.append((i, rows, cols, gt))
        return class_targets, matches

    def layer_losses(self, logits: torch.Tensor, masks: torch.Tensor, targets: list[dict],
                     mask_name: str = "mask") -> tuple[dict[str, torch.Tensor], list]:
        """One decoder layer's matching and losses: class cross-entropy (no-object weighted down) and the matched
        masks' BCE and Dice (``{mask_name}_bce``, ``{mask_name}_dice``); also returns the matches."""
        w_class, w_bce, w_dice = self.cost_weights
        class_targets, matches = self.assign(logits, masks, targets)
        losses = {"class": w_class * F.cross_entropy(logits.flatten(0, 1).float(), class_targets.flatten(),
                                                     weight=self.class_weights)}
        if matches:
            pred = torch.cat([masks[i, rows] for i, rows, _, _ in matches]).float()
            gt = torch.cat([gt[cols] for _, _, cols, gt in matches])
            losses[f"{mask_name}_bce"] = w_bce * bce_loss(pred, gt)
            losses[f"{mask_name}_dice"] = w_dice * dice_loss(pred, gt)
        return losses, matches

    @staticmethod
    def instance_scores(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask2Former's instance scores: the best class's probability times the mean foreground probability of
        the query's mask; returns (scores, 0-based labels)."""
        probabilities, labels = logits.softmax(-1)[..., :-1].max(-1)
        foreground = (masks > 0).flatten(-2).float()
        mask_quality = (masks.sigmoid().flatten(-2) * foreground).sum(-1) / foreground.sum(-1).clamp(min=1)
        return probabilities * mask_quality, labels


def add_losses(total: dict[str, torch.Tensor], layer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum a layer's losses into the running total, term by term (Mask2Former's auxiliary losses count fully)."""
    for name, value in layer.items():
        total[name] = total[name] + value if name in total else value
    return total
