"""MobileSAM's fidelity metric: how closely a student SAM reproduces its teacher.

On held-out images: embedding MSE and cosine similarity against the cached teacher embedding, and
mIoU between teacher and student masks for the same prompt: a single point, and a box taken from
the teacher's mask for that point. Masks are compared at the original image resolution through
segment-anything's ``SamPredictor``, for SAM 2 models sam2's ``SAM2ImagePredictor``, for HQ-SAM models
segment-anything-hq's ``SamPredictor`` (the embedding figures are
then those of the image embedding; the high-resolution maps count through the masks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from tqdm import tqdm

from sam_distill.core.fileio import atomic_write_json
from sam_distill.core.images import load_rgb
from sam_distill.data.cache import EmbeddingCache


def _set_embedding(predictor: SamPredictor, embedding: torch.Tensor, original_size, input_size) -> None:
    """Give a predictor a precomputed embedding (what ``set_image`` would have computed)."""
    predictor.reset_image()
    predictor.features = embedding[None].to(predictor.device)
    predictor.original_size = tuple(original_size)
    predictor.input_size = tuple(input_size)
    predictor.is_image_set = True


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _set_sam2_features(predictor, features: dict[str, torch.Tensor], original_size) -> None:
    """Give sam2's predictor precomputed features (what its ``set_image`` would have computed)."""
    predictor.reset_predictor()
    high_res = [features[name][None].to(predictor.device) for name in sorted(features) if name != "image_embed"]
    predictor._features = {"image_embed": features["image_embed"][None].to(predictor.device),
                           "high_res_feats": high_res}
    predictor._orig_hw = [tuple(original_size)]
    predictor._is_image_set = True


class _Side:
    """One model of the comparison behind its package's predictor, fed features rather than images."""

    def __init__(self, model: torch.nn.Module, device):
        self.model = model.to(device).eval()
        if hasattr(model, "sam_mask_decoder"):
            from sam2.sam2_image_predictor import SAM2ImagePredictor

            from sam_distill.sam.sam2_models import image_features

            self.family, self.predictor, self.image_features = "sam2", SAM2ImagePredictor(self.model), image_features
        elif isinstance(model, Sam):
            self.family, self.predictor = "sam", SamPredictor(self.model)
        else:
            from segment_anything_hq import SamPredictor as HqPredictor

            from sam_distill.sam.hq_models import image_features

            self.family, self.predictor, self.image_features = "hq", HqPredictor(self.model), image_features

    def features(self, pixels: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        if self.family == "sam":
            return self.model.image_encoder(pixels)[0].float()
        return {name: value[0].float() for name, value in self.image_features(self.model, pixels).items()}

    def set(self, features, original_size, input_size) -> None:
        if self.family == "sam2":
            _set_sam2_features(self.predictor, features, original_size)
        elif self.family == "hq":
            _set_embedding(self.predictor, features["image_embed"], original_size, input_size)
            self.predictor.interm_features = [features["interm_embed_0"].permute(1, 2, 0)[None]]
        else:
            _set_embedding(self.predictor, features, original_size, input_size)

    def predict(self, **prompt):
        masks, scores, _ = self.predictor.predict(**prompt)
        return masks > 0, scores


def _embedding(features) -> torch.Tensor:
    return features["image_embed"] if isinstance(features, dict) else features


@torch.no_grad()
def fidelity(teacher: torch.nn.Module, student: torch.nn.Module, cache: EmbeddingCache, indices: list[int],
             points_per_image: int = 8, seed: int = 0, device: torch.device | str = "cpu") -> dict:
    """Teacher (SAM or SAM 2) against student on the cached held-out entries; the teacher's side is read from the
    cache, the student's computed."""
    teacher_side, student_side = _Side(teacher, device), _Side(student, device)
    preprocessing = cache.preprocessing
    rng = np.random.default_rng(seed)
    per_image = []
    for index in tqdm(indices, desc="fidelity", unit="img"):
        entry = cache.entries[index]
        image = load_rgb(entry["source"])
        pixels = preprocessing(image)[None].to(device)
        targets = cache.targets(index)
        teacher_features = ({k: v.to(device) for k, v in targets.items()} if isinstance(targets, dict)
                            else targets.to(device))
        student_features = student_side.features(pixels)
        input_size = preprocessing.resize(image).shape[:2]
        teacher_embedding, student_embedding = _embedding(teacher_features), _embedding(student_features)
        mse = F.mse_loss(student_embedding, teacher_embedding).item()
        cosine = F.cosine_similarity(student_embedding.flatten(), teacher_embedding.flatten(), dim=0).item()
        teacher_side.set(teacher_features, image.shape[:2], input_size)
        student_side.set(student_features, image.shape[:2], input_size)
        h, w = image.shape[:2]
        point_ious, box_ious = [], []
        for x, y in rng.uniform([0, 0], [w - 1, h - 1], size=(points_per_image, 2)):
            point = dict(point_coords=np.array([[x, y]]), point_labels=np.array([1]), multimask_output=True)
            t_masks, t_scores = teacher_side.predict(**point)
            s_masks, s_scores = student_side.predict(**point)
            # Each model answers with its own most confident mask, as a user of either would see.
            t_mask, s_mask = t_masks[t_scores.argmax()], s_masks[s_scores.argmax()]
            point_ious.append(mask_iou(t_mask, s_mask))
            ys, xs = np.nonzero(t_mask)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()]) if len(xs) else np.array([0, 0, w - 1, h - 1])
            t_box = teacher_side.predict(box=box, multimask_output=False)[0][0]
            s_box = student_side.predict(box=box, multimask_output=False)[0][0]
            box_ious.append(mask_iou(t_box, s_box))
        per_image.append({"source": entry["source"], "embedding_mse": mse, "embedding_cosine": cosine,
                          "point_miou": float(np.mean(point_ious)), "box_miou": float(np.mean(box_ious))})
    keys = ("point_miou", "box_miou", "embedding_mse", "embedding_cosine")
    summary = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
    return {"summary": summary, "images": len(per_image), "points_per_image": points_per_image, "per_image": per_image}


def format_table(result: dict, title: str = "fidelity to the teacher") -> str:
    s = result["summary"]
    rows = [("1-point mIoU", f"{s['point_miou']:.4f}"), ("box mIoU", f"{s['box_miou']:.4f}"),
            ("embedding MSE", f"{s['embedding_mse']:.6f}"), ("embedding cosine", f"{s['embedding_cosine']:.4f}"),
            ("held-out images", str(result["images"]))]
    width = max(len(r[0]) for r in rows)
    lines = [title, "-" * (width + 12)] + [f"{name:<{width}}  {value:>10}" for name, value in rows]
    return "\n".join(lines)


def write_fidelity(result: dict, path: Path) -> None:
    atomic_write_json(Path(path), result)


def load_fidelity(path: Path) -> dict:
    return json.loads(Path(path).read_text())
