"""Text → mask selection with CLIP (open_clip, local checkpoint only), as FastSAM's text prompt does.

Each candidate mask is cut out of the image (its box, background blacked out), embedded by CLIP's
image tower and compared with the text's embedding; the highest cosine similarity wins. Shared by
the FastSAM-style student and by any other model that proposes masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sam_distill.core.errors import DistillError

MIN_MASK_PIXELS = 16


@dataclass
class ClipScorer:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device

    @torch.inference_mode()
    def image_features(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Unit-length CLIP embeddings of H×W×3 uint8 crops (N×D, on the CPU)."""
        from PIL import Image

        images = torch.stack([self.preprocess(Image.fromarray(crop)) for crop in crops]).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_image(images).float(), dim=-1).cpu()

    @torch.inference_mode()
    def text_features(self, names: list[str], templates: list[str] = ("{}",)) -> torch.Tensor:
        """One unit-length embedding per name, averaged over the prompt templates (CLIP's prompt ensembling)."""
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise DistillError(f"CLIP prompt template {bad[0]!r} has no '{{}}' where the class name goes")
        features = []
        for name in names:
            tokens = self.tokenizer([t.format(name) for t in templates]).to(self.device)
            per_template = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)
            features.append(torch.nn.functional.normalize(per_template.mean(0), dim=-1))
        return torch.stack(features).cpu()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    def similarity(self, crops: list[np.ndarray], text: str) -> torch.Tensor:
        """Cosine similarity of each H×W×3 uint8 crop with ``text``."""
        return (self.image_features(crops) @ self.text_features([text]).T)[:, 0]


def load_clip(checkpoint: Path | str | None, model_name: str = "ViT-B-32", model_config: Path | None = None,
              device: str | torch.device = "cpu", key: str = "--clip-checkpoint",
              purpose: str = "text prompts need") -> ClipScorer:
    """open_clip ``model_name`` with weights from a local file; ``model_config`` registers a custom architecture JSON.
    ``key`` names the option or config key that gives the checkpoint, for the error a user reads."""
    if checkpoint is None or not Path(checkpoint).is_file():
        where = f" ({checkpoint} does not exist)" if checkpoint else ""
        raise DistillError(f"{purpose} a local CLIP checkpoint{where}; give {key} FILE (the open_clip weights of "
                           f"{model_name}, e.g. ViT-B-32's open_clip_pytorch_model.bin)")
    try:
        import open_clip
    except ImportError:
        raise DistillError("text prompts need open_clip; install it with `pip install sam-distill[clip]`") from None
    if model_config is not None:
        open_clip.add_model_config(Path(model_config))
    if model_name not in open_clip.list_models():
        raise DistillError(f"unknown CLIP model {model_name!r}; use an open_clip name (e.g. ViT-B-32) or pass "
                           f"--clip-config with its architecture JSON")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint),
                                                                     device=device)
    except RuntimeError as err:
        raise DistillError(f"CLIP checkpoint {checkpoint} does not fit {model_name}: {str(err).splitlines()[0]}") from None
    return ClipScorer(model.eval(), preprocess, open_clip.get_tokenizer(model_name), torch.device(device))


def mask_crops(image: np.ndarray, masks: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """Each mask's bounding-box crop with everything outside the mask black; tiny masks skipped."""
    crops, kept = [], []
    for index, mask in enumerate(np.asarray(masks, dtype=bool)):
        if mask.sum() < MIN_MASK_PIXELS:
            continue
        rows, cols = np.nonzero(mask)
        y1, y2, x1, x2 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        crops.append(image[y1:y2, x1:x2] * mask[y1:y2, x1:x2, None])
        kept.append(index)
    return crops, kept


def select_by_text(scorer: ClipScorer, image: np.ndarray, masks: np.ndarray, text: str) -> tuple[int | None, torch.Tensor]:
    """Index of the mask that best matches ``text`` (None when no mask is large enough) and all scores."""
    crops, kept = mask_crops(image, masks)
    scores = torch.full((len(masks),), float("-inf"))
    if not crops:
        return None, scores
    scores[kept] = scorer.similarity(crops, text)
    return int(scores.argmax()), scores


def classify_masks(scorer: ClipScorer, image: np.ndarray, masks: np.ndarray, text_features: torch.Tensor,
                   logit_scale: float) -> torch.Tensor:
    """Zero-shot class probabilities (N×K softmax over the K text embeddings) of each mask's crop, the same crops
    and embeddings as :func:`select_by_text`; masks too small to crop get all-zero rows."""
    crops, kept = mask_crops(image, masks)
    probabilities = torch.zeros(len(masks), len(text_features))
    if crops:
        logits = logit_scale * scorer.image_features(crops) @ text_features.T
        probabilities[kept] = logits.softmax(dim=-1)
    return probabilities
