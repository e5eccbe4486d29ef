"""SAM 2 → ONNX with the interface SAM 2's ONNX runners take (samexporter, and AnyLabeling through it): an
encoder ``image`` (1×3×1024×1024, SAM 2's preprocessing) → ``high_res_feats_0``, ``high_res_feats_1``,
``image_embed``, and a decoder whose seven inputs, in this order, are those three, ``point_coords``,
``point_labels``, ``mask_input`` and ``has_mask_input``, returning ``masks`` (SAM 2's three multimask
low-resolution logits) and ``iou_predictions``. Runners feed the decoder by position, so the order is part of the
interface; they resize the masks to the image themselves (the original size is theirs to know).

The decoder is SAM 2's own prompt encoder and mask decoder with the two steps tracing cannot take rewritten as
arithmetic: the point labels select their embeddings by masks instead of boolean indexing, and the mask prompt is
blended with the no-mask embedding by ``has_mask_input``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sam_distill.export.onnx_export import _export, check_opset, family_manifest, pair_files
from sam_distill.export.registry import Exported, ExportOptions, ExportSource

ENCODER_OUTPUTS = ["high_res_feats_0", "high_res_feats_1", "image_embed"]
DECODER_INPUTS = ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                  "mask_input", "has_mask_input"]
DECODER_OUTPUTS = ["masks", "iou_predictions"]
DECODER_DYNAMIC_AXES = {"point_coords": {0: "num_labels", 1: "num_points"},
                        "point_labels": {0: "num_labels", 1: "num_points"},
                        "mask_input": {0: "num_labels"}, "has_mask_input": {0: "num_labels"},
                        "masks": {0: "num_labels"}, "iou_predictions": {0: "num_labels"}}
ENCODER_NOTE = ("input `image`: SAM 2's preprocessing (SAM2Transforms): RGB/255 resized to S×S (bilinear, "
                "antialiased), normalised with ImageNet mean/std; outputs high_res_feats_0, high_res_feats_1, "
                "image_embed (the no-memory embedding added), as SAM2ImagePredictor.set_image keeps them")
DECODER_NOTE = ("samexporter's SAM 2 decoder interface, inputs by position: point_coords in model-input pixels "
                "(x·S/W, y·S/H), a box as two corner points labelled 2 and 3, clicks 1/0; masks: 3 multimask "
                "low-resolution logits (S/4), resize to the image with bilinear interpolation")


class Sam2OnnxEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        from sam_distill.sam.sam2_models import features_from_fpn

        features = features_from_fpn(self.model.image_encoder(image)["backbone_fpn"], self.model)
        return tuple(features[name] for name in ENCODER_OUTPUTS)


class Sam2OnnxDecoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.prompt_encoder = model.sam_prompt_encoder
        self.mask_decoder = model.sam_mask_decoder
        self.image_size = int(model.image_size)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM 2's ``_embed_points`` with its padding point (the predictor always pads: boxes arrive as points)."""
        coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], dim=1)
        labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1).unsqueeze(-1)
        embedding = self.prompt_encoder.pe_layer._pe_encoding(coords / self.image_size)
        embedding = embedding * (labels != -1) + self.prompt_encoder.not_a_point_embed.weight * (labels == -1)
        for index, point_embedding in enumerate(self.prompt_encoder.point_embeddings):
            embedding = embedding + point_embedding.weight * (labels == index)
        return embedding

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input):
        sparse = self.embed_points(point_coords, point_labels)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        dense = has_mask * self.prompt_encoder.mask_downscaling(mask_input) + \
            (1 - has_mask) * self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou, _, _ = self.mask_decoder.predict_masks(
            image_embeddings=image_embed, image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, repeat_image=True,
            high_res_features=[high_res_feats_0, high_res_feats_1])
        return masks[:, 1:], iou[:, 1:]


def decoder_example(model: nn.Module) -> tuple[torch.Tensor, ...]:
    size = int(model.image_size)
    generator = torch.Generator().manual_seed(0)
    grid = size // 16
    return (torch.randn(1, 256, grid, grid, generator=generator),
            torch.randn(1, 32, grid * 4, grid * 4, generator=generator),
            torch.randn(1, 64, grid * 2, grid * 2, generator=generator),
            torch.randint(0, size, (1, 3, 2), generator=generator).float(),
            torch.tensor([[2.0, 3.0, 1.0]]),
            torch.randn(1, 1, grid * 4, grid * 4, generator=generator),
            torch.tensor([1.0]))


def export_pair(model: nn.Module, out: Path, opset: int) -> tuple[Path, Path]:
    size = int(model.image_size)
    encoder = _export(Sam2OnnxEncoder(model).eval(), (torch.zeros(1, 3, size, size),), out / "encoder.onnx",
                      ["image"], ENCODER_OUTPUTS, opset)
    decoder = _export(Sam2OnnxDecoder(model).eval(), decoder_example(model), out / "decoder.onnx", DECODER_INPUTS,
                      DECODER_OUTPUTS, opset, DECODER_DYNAMIC_AXES)
    return encoder, decoder


class Sam2TorchReference:
    """``SAM2ImagePredictor``'s features and masks on the parity images (multimask answers; for one mask the
    best-scoring of the three, as SAM 2 runners pick it)."""

    def __init__(self, model: nn.Module, images: list[np.ndarray], prompts_per_image: int = 2):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        from sam_distill.export.parity import sample_prompts

        predictor = SAM2ImagePredictor(model)
        self.images, self.embeddings, self.prompts, self.masks = images, [], [], []
        with torch.inference_mode():
            for index, image in enumerate(images):
                predictor.set_image(image)
                features = predictor._features
                maps = {"image_embed": features["image_embed"], "high_res_feats_0": features["high_res_feats"][0],
                        "high_res_feats_1": features["high_res_feats"][1]}
                # flattened in the order Sam2OnnxPredictor.embeddings uses
                self.embeddings.append(np.concatenate([maps[name].numpy().ravel() for name in DECODER_INPUTS[:3]]))
                prompts = sample_prompts(image.shape[:2], prompts_per_image, seed=index)
                self.prompts.append(prompts)
                answers = []
                for prompt in prompts:
                    masks, scores, _ = predictor.predict(**prompt, multimask_output=True)
                    answers.append(masks > 0 if "box" not in prompt else masks[[int(scores.argmax())]] > 0)
                self.masks.append(answers)


def open_sam2_pair(file_format: str, encoder: Path, decoder: Path):
    from sam_distill.export.runtime import Sam2OnnxPredictor

    return Sam2OnnxPredictor(encoder, decoder)


def export_sam2_onnx(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """fp32 pair; fp16 and dynamic INT8 copies on request; every file's parity against ``SAM2ImagePredictor``."""
    from sam_distill.export.parity import parity_checked

    model, arch, _ = source.load()
    check_opset(options.opset)
    out.mkdir(parents=True, exist_ok=True)
    encoder, decoder = export_pair(model.eval(), out, options.opset)
    files = pair_files(encoder, decoder, out, options, {"encoder": ENCODER_NOTE, "decoder": DECODER_NOTE})
    size = int(model.image_size)
    preprocessing = {"resize": "square", "pixel_mean": [0.485, 0.456, 0.406], "pixel_std": [0.229, 0.224, 0.225]}
    return parity_checked(files, options, out, size, lambda images: Sam2TorchReference(model, images),
                          family_manifest(arch, size, "sam2", preprocessing, ENCODER_NOTE), log,
                          against="SAM2ImagePredictor", opener=open_sam2_pair)
