"""SAM-cls's model: a SAM, SAM 2 or HQ-SAM (everything mode and the embedding) plus a mask classifier, saved as
plain data (``config["sam"]`` rebuilds a SAM 2 or HQ-SAM)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import load_tagged, save_tagged_model

SAM_CLS_FORMAT = "sam-distill/sam-cls"
def match_proposals(proposals: list[dict], ground_truth: list[dict], gt_labels: list[int], min_iou: float) -> np.ndarray:
    """Label of each proposal RLE: that of the ground-truth RLE it overlaps most if the mask IoU is at least
    ``min_iou``, else 0 (background)."""
    labels = np.zeros(len(proposals), dtype=np.int64)
    if not proposals or not ground_truth:
        return labels
    iou = np.asarray(mask_utils.iou(proposals, ground_truth, [0] * len(ground_truth))).reshape(len(proposals), -1)
    best = iou.argmax(1)
    hit = iou[np.arange(len(proposals)), best] >= min_iou
    labels[hit] = np.asarray(gt_labels)[best[hit]]
    return labels


def input_frame(masks: np.ndarray, input_size: tuple[int, int], image_size: int) -> torch.Tensor:
    """N×H×W masks at the image's own resolution → N×S×S soft masks on SAM's padded model-input frame."""
    if len(masks) == 0:
        return torch.zeros(0, image_size, image_size)
    resized = F.interpolate(torch.from_numpy(np.asarray(masks, dtype=np.float32))[None], size=tuple(input_size),
                            mode="bilinear", align_corners=False)[0]
    return F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))


def decode_rles(proposals: list[dict], height: int, width: int) -> np.ndarray:
    if not proposals:
        return np.zeros((0, height, width), dtype=bool)
    return mask_utils.decode([p["segmentation"] for p in proposals]).transpose(2, 0, 1).astype(bool)


class SamCls:
    """A SAM (for everything mode and the embedding) plus a mask classifier; probabilities have column 0 =
    background and column i = class i (``classes[i - 1]``)."""

    def __init__(self, sam, config: dict, classes: list[dict], classifier_state: dict):
        from sam_distill.sam.families import sam_parts
        from sam_distill.students.heads.mask_classifier import MaskClassifier

        spec = dict(config.get("sam") or {"family": "sam"})
        self.sam, self.config, self.classes = sam.eval(), {**config, "sam": spec}, list(classes)
        self.family = spec["family"]
        self.parts = sam_parts(sam, self.family, {k: v for k, v in spec.items() if k != "family"})
        self.image_size = self.parts.image_size
        self.classifier = None
        if config["classifier"] == "pooled":
            self.classifier = MaskClassifier(len(classes), config["geometry"], config["hidden"])
            if classifier_state:
                self.classifier.load_state_dict(classifier_state)
            self.classifier.eval()
        else:
            self.text_features = classifier_state["text_features"]
            self.logit_scale = float(classifier_state["logit_scale"])

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    def to(self, device) -> "SamCls":
        self.sam.to(device)
        if self.classifier is not None:
            self.classifier.to(device)
        return self

    def everything_generator(self, settings: dict, device: torch.device):
        """The automatic mask generator of the SAM's own package."""
        from sam_distill.sam.teachers import make_generator

        return make_generator(self.sam, settings, device, self.family)

    @torch.no_grad()
    def embed(self, image: torch.Tensor):
        """One SAM-preprocessed 3×S×S image → what its decoder takes (``ImageFeatures`` of batch 1)."""
        return self.parts.encode(image[None].to(self.device))

    def features(self, embedding, masks: torch.Tensor, input_size) -> torch.Tensor:
        from sam_distill.students.heads.mask_classifier import pooled_features

        return pooled_features(embedding.embed[0], masks, tuple(input_size), self.config["geometry"])

    @torch.no_grad()
    def probabilities(self, embedding: torch.Tensor | None, masks: np.ndarray, input_size, image: np.ndarray | None = None,
                      scorer=None) -> torch.Tensor:
        """N×(1 + classes) probabilities of the N masks (H×W, the image's resolution)."""
        if self.classifier is not None:
            frame = input_frame(masks, input_size, self.image_size)
            return self.classifier(self.features(embedding, frame, input_size)).softmax(-1).cpu()
        from sam_distill.sam.text_prompts import classify_masks

        if scorer is None:
            raise DistillError("this SAM-cls model classifies with CLIP; give its local CLIP checkpoint "
                               "(--clip-checkpoint FILE)")
        probabilities = classify_masks(scorer, image, masks, self.text_features, self.logit_scale)
        classes = len(self.classes)
        background = probabilities[:, classes:].sum(1, keepdim=True)
        return torch.cat([background, probabilities[:, :classes]], dim=1)

    def label(self, proposals: list[dict], probabilities: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label 1..C, score, is_background) per proposal.

        Score = probability of the best foreground class × SAM's predicted IoU of the mask. The classifier knows
        *what* the mask shows, SAM's IoU head how *well* it is cut out; COCO AP ranks by score, so a confidently
        classified but ragged mask should rank below an equally confident clean one (Mask Scoring R-CNN's
        reasoning). Both factors lie in [0, 1], so the product stays a probability-like number that one
        ``score_threshold`` can cut. A mask whose most likely class is background is dropped."""
        if len(proposals) == 0:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool)
        foreground = probabilities[:, 1:]
        best_p, best = foreground.max(1)
        quality = torch.tensor([min(max(p["predicted_iou"], 0.0), 1.0) for p in proposals])
        background = probabilities.argmax(1) == 0
        return (best + 1).numpy(), (best_p * quality).numpy(), background.numpy()

    def result(self, proposal: dict, image_id: int, label: int, score: float) -> dict:
        return {"image_id": int(image_id), "category_id": self.classes[label - 1]["id"],
                "segmentation": proposal["segmentation"], "bbox": list(proposal["bbox"]), "score": float(score)}

    def to_results(self, proposals: list[dict], probabilities: torch.Tensor, image_id: int,
                   score_threshold: float = 0.05) -> list[dict]:
        labels, scores, background = self.label(proposals, probabilities)
        return [self.result(p, image_id, labels[i], scores[i]) for i, p in enumerate(proposals)
                if not background[i] and scores[i] >= score_threshold]

    @torch.no_grad()
    def decode_grid(self, embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything mode's decoding on a fixed embedding: SAM's decoder on the points_per_side² grid, three masks
        per point, ``points_per_batch`` at a time; returns the best (by predicted IoU) low-res logits and IoU per
        point. What the generator adds after this (thresholds, NMS, RLE) is bookkeeping, not network."""
        from segment_anything.utils.amg import build_point_grid

        settings, size = self.config["generator"], self.image_size
        grid = torch.from_numpy(build_point_grid(settings["points_per_side"]) * size).float().to(embedding.embed.device)
        masks, ious = [], []
        for start in range(0, len(grid), settings["points_per_batch"]):
            points = grid[start:start + settings["points_per_batch"], None]
            labels = torch.ones(len(points), 1, device=points.device, dtype=torch.int)
            low, iou = self.parts.decode_prompts(embedding, points=(points, labels), multimask=True)
            best = iou.argmax(1)
            masks.append(low[torch.arange(len(low)), best])
            ious.append(iou[torch.arange(len(iou)), best])
        return torch.cat(masks), torch.cat(ious)

    @torch.no_grad()
    def decode_and_classify(self, embedding) -> torch.Tensor:
        """The bench's decoder phase: grid decoding plus (pooled classifier) classification of each point's mask."""
        logits, _ = self.decode_grid(embedding)
        if self.classifier is None:
            return logits
        side = logits.shape[-1]
        return self.classifier(self.features(embedding, logits > 0, (side, side)))

    def save(self, path: Path, meta: dict | None = None) -> Path:
        state = ({k: v.detach().cpu() for k, v in self.classifier.state_dict().items()} if self.classifier is not None
                 else {"text_features": self.text_features.cpu(), "logit_scale": torch.tensor(self.logit_scale)})
        return save_tagged_model(path, SAM_CLS_FORMAT, self.sam, config=self.config, classes=self.classes,
                                 classifier_state=state, meta=meta or {})


def load_sam_cls(path: Path) -> SamCls:
    from sam_distill.sam.families import load_family_model

    payload = load_tagged(path, SAM_CLS_FORMAT, "SAM-cls model", "make one with a `recipe: sam_cls` run")
    config = payload["config"]
    sam = load_family_model(config["encoder"], int(config["image_size"]), spec=config.get("sam"))[0]
    sam.load_state_dict(payload["state_dict"])
    return SamCls(sam, config, payload["classes"], payload["classifier_state"])


def load_clip_for(spec, device, checkpoint: Path | None = None):
    """The recipe's CLIP scorer; a missing checkpoint is one sentence naming ``sam_cls.clip_checkpoint``."""
    from sam_distill.sam.text_prompts import load_clip

    return load_clip(checkpoint or spec.clip_checkpoint, spec.clip_model, spec.clip_config, device,
                     key="sam_cls.clip_checkpoint", purpose="sam_cls.classifier clip needs")
