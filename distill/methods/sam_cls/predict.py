"""``distill predict`` on a SAM-cls file: everything mode → the model's classifier, optionally one mask per image
picked by text with CLIP.

The text path is FastSAM's (``text_prompts.select_by_text``): every everything-mode mask is cropped, embedded by
CLIP and compared with the text; the best one is kept, labelled by the model's classifier.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.core.errors import DistillError
from sam_distill.methods.instance_predict import Predictions, readable_images


def predict_images(model, paths: list[Path], generator, score_threshold: float, scorer=None, text: str | None = None,
                   log=print) -> tuple[list[dict], list[dict]]:
    """(COCO results, COCO image entries with their ``path``): everything mode → classifier; with ``text`` only
    the mask CLIP matches best to it (its ``text_similarity`` added). Unreadable images are skipped."""
    from sam_distill.core.images import Preprocessing
    from sam_distill.data.everything import label_image
    from sam_distill.methods.sam_cls.model import decode_rles
    from sam_distill.sam.text_prompts import select_by_text

    preprocessing = Preprocessing(model.image_size)
    results, images = [], []
    for image, item, entry in readable_images(paths, model.image_size, desc="sam-cls", log=log):
        image_id, input_size = item["image_id"], item["input_size"]
        proposals = label_image(generator, image)
        masks = decode_rles(proposals, *item["original_size"])
        embedding = model.embed(preprocessing(image)) if model.classifier is not None else None
        probabilities = model.probabilities(embedding, masks, input_size, image, scorer)
        if text is None:
            results += model.to_results(proposals, probabilities, image_id, score_threshold)
        else:
            best, similarity = select_by_text(scorer, image, masks, text)
            if best is not None:
                labels, scores, _ = model.label(proposals, probabilities)
                found = model.result(proposals[best], image_id, labels[best], scores[best])
                results.append({**found, "text": text, "text_similarity": float(similarity[best])})
        images.append(entry)
    return results, images


def predict_sam_cls(path: Path, images: list[Path], device: torch.device, *, text: str | None = None,
                    clip_checkpoint: Path | None = None, clip_model: str | None = None, clip_config: Path | None = None,
                    score_threshold: float = 0.05, generator: dict | None = None) -> Predictions:
    """Labelled everything-mode masks (``generator`` overrides the model's own settings); CLIP, for ``text`` and for
    CLIP-classified models, defaults to the checkpoint, architecture and config the model was made with."""
    from sam_distill.data.everything import generator_settings
    from sam_distill.methods.sam_cls.model import load_sam_cls
    from sam_distill.sam.text_prompts import load_clip

    model = load_sam_cls(path).to(device)
    scorer = None
    if text is None and model.classifier is not None and (clip_checkpoint or clip_model or clip_config):
        raise DistillError("this SAM-cls model classifies with its own pooled-feature head, so CLIP options "
                           "(--clip-checkpoint, --clip-model, --clip-config) go with --text only")
    if text is not None or model.classifier is None:
        stored = model.config.get("clip_checkpoint")
        scorer = load_clip(clip_checkpoint or (Path(stored) if stored else None),
                           clip_model or model.config.get("clip_model", "ViT-B-32"),
                           clip_config or model.config.get("clip_config"), device,
                           purpose="--text and CLIP-classified SAM-cls models need")
    settings = generator_settings(**{**model.config["generator"], **(generator or {})})
    results, entries = predict_images(model, images, model.everything_generator(settings, device), score_threshold,
                                      scorer, text)
    return Predictions(results, entries, model.classes)
