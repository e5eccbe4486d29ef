"""SAM's, SAM 2's and HQ-SAM's image encoder, prompt encoder and mask decoder behind the one interface the automatic
instance methods (RSPrompter's prompters, SAM-det, SAM-seg, SAM-cls) build on, so each runs on any teacher family's
encoder and on the students distilled from it.

The families differ in what the decoder takes from the image encoder: SAM the image embedding, SAM 2 also two
high-resolution maps (its decoder's ``conv_s0``/``conv_s1`` projections of the stride-4 and stride-8 FPN levels),
HQ-SAM also the early ViT feature. ``ImageFeatures`` carries all of them and slices by image like a tensor, so a
head that walks a batch image by image never needs to know the family. Every family's decoder takes the same
prompt embeddings (256-d sparse tokens, a dense map on the embedding grid), so a prompter's output fits them all.

What a saved head needs to rebuild its SAM without the encoder's checkpoint is ``SamParts.spec``: the family and,
for SAM 2, the model's hydra config (built only from trusted classes), for HQ-SAM the architecture or student and
the early feature's width.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.sam import hq_models, sam2_models

BOX_CHUNK = 64  # box prompts decoded per mask-decoder call (the decoder repeats the image per prompt)


class ImageFeatures:
    """What an image encoder gives its decoder, for a batch: ``embed`` (B×256×G×G) and the family's other maps by
    name (B×C×H×W). ``features[i:i + 1]`` is one image's."""

    def __init__(self, embed: torch.Tensor, extra: dict[str, torch.Tensor] | None = None):
        self.embed, self.extra = embed, dict(extra or {})

    def __getitem__(self, index) -> "ImageFeatures":
        return ImageFeatures(self.embed[index], {name: value[index] for name, value in self.extra.items()})

    def __len__(self) -> int:
        return self.embed.shape[0]


class SamParts(nn.Module):
    """segment-anything's parts: the encoder returns the embedding, the decoder takes nothing else. Without a
    prompt encoder and decoder (``with_decoder=False``: SAM-seg never prompts SAM) only ``encode`` works."""

    family = "sam"

    def __init__(self, model: nn.Module, spec: dict | None = None, with_decoder: bool = True):
        super().__init__()
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.prompt_encoder if with_decoder else None
        self.mask_decoder = model.mask_decoder if with_decoder else None
        self.spec = {"family": self.family, **(spec or {})}

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.img_size)

    @property
    def tap_root(self) -> nn.Module:
        """The module whose layers RSPrompter's aggregator taps."""
        return self.image_encoder

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        return ImageFeatures(self.image_encoder(images))

    def no_mask_dense(self, grid: int) -> torch.Tensor:
        """The dense prompt of "no mask given": the learnt no-mask embedding on every cell (1×256×G×G, which the
        decoder broadcasts over the prompts)."""
        return self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, grid, grid)

    def decode(self, features: ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor | None = None,
               multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """n prompts on one image's features: sparse n×K×256 embeddings, dense n×256×G×G (``None``: no mask) →
        low-res logits n×M×4G×4G, IoU n×M."""
        embed = features.embed
        if dense is None:
            dense = self.no_mask_dense(embed.shape[-1])
        return self._decode(features, sparse.to(embed.dtype), dense.to(embed.dtype), multimask)

    def _decode(self, features, sparse, dense, multimask):
        return self.mask_decoder(image_embeddings=features.embed, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask)

    def encode_prompts(self, points=None, boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None):
        """(sparse, dense) prompt embeddings of points (coords, labels), boxes (n×4 xyxy) and mask logits, in
        model-input pixels."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def decode_prompts(self, features: ImageFeatures, points=None, boxes: torch.Tensor | None = None,
                       multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """n point or box prompts (model-input pixels) on one image: low-res logits n×M×4G×4G, IoU n×M."""
        sparse, dense = self.encode_prompts(points=points, boxes=boxes)
        return self._decode(features, sparse, dense, multimask)

    def box_masks(self, features: ImageFeatures, boxes: torch.Tensor) -> torch.Tensor:
        """The single-mask answer (low-res logits n×4G×4G) to each box prompt (xyxy, input px) on one image,
        ``BOX_CHUNK`` boxes per decoder call."""
        size = 4 * features.embed.shape[-1]
        chunks = [features.embed.new_zeros(0, size, size)]
        for start in range(0, len(boxes), BOX_CHUNK):
            chunks.append(self.decode_prompts(features, boxes=boxes[start:start + BOX_CHUNK])[0][:, 0])
        return torch.cat(chunks)


class Sam2Parts(SamParts):
    """sam2's parts (of a ``SAM2Base``): the image encoder's FPN levels become the "no memory" image embedding
    and the two projected high-resolution maps, as ``SAM2ImagePredictor`` prepares them; a box is two corner
    points, as sam2's predictor prompts it."""

    family = "sam2"

    def __init__(self, model: nn.Module, spec: dict | None = None, with_decoder: bool = True):
        nn.Module.__init__(self)
        self.image_encoder = model.image_encoder
        self.prompt_encoder = model.sam_prompt_encoder if with_decoder else None
        self.mask_decoder = model.sam_mask_decoder if with_decoder else None
        self.register_buffer("no_mem_embed", model.no_mem_embed.detach().clone() if model.directly_add_no_mem_embed
                             else torch.zeros_like(model.no_mem_embed))
        self.levels = model.num_feature_levels
        self.high_res = with_decoder and model.use_high_res_features_in_sam
        self._image_size = int(model.image_size)
        self.spec = {"family": self.family, **(spec or {})}

    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def tap_root(self) -> nn.Module:
        return self.image_encoder.trunk

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        convs = (self.mask_decoder.conv_s0, self.mask_decoder.conv_s1) if self.high_res else ()
        features = sam2_models.project_fpn(self.image_encoder(images)["backbone_fpn"], self.levels,
                                           self.no_mem_embed, convs)
        return ImageFeatures(features.pop("image_embed"), features)

    def _decode(self, features, sparse, dense, multimask):
        high_res = [features.extra[name] for name in sorted(features.extra)]
        return sam2_models.run_decoder(self.prompt_encoder, self.mask_decoder, features.embed, high_res, sparse,
                                       dense, multimask)

    def encode_prompts(self, points=None, boxes=None, masks=None):
        return self.prompt_encoder(points=sam2_models.box_points(points, boxes), boxes=None, masks=masks)


class HqParts(SamParts):
    """segment-anything-hq's parts: the encoder also returns the early ViT feature, which the HQ decoder fuses
    into its high-quality mask; the decoder's answer is SAM's mask plus the HQ one, as its predictor's default."""

    family = "hq"

    @property
    def tap_root(self) -> nn.Module:
        encoder = self.image_encoder
        return encoder.student if isinstance(encoder, hq_models.HqStudentEncoder) else encoder

    def encode(self, images: torch.Tensor) -> ImageFeatures:
        embed, interm = self.image_encoder(images)
        return ImageFeatures(embed, {"interm_embed_0": interm[0].permute(0, 3, 1, 2)})

    def _decode(self, features, sparse, dense, multimask):
        return hq_models.run_decoder(self.prompt_encoder, self.mask_decoder,
                                     {"image_embed": features.embed, **features.extra}, sparse, dense, multimask)


PARTS = {"sam": SamParts, "sam2": Sam2Parts, "hq": HqParts}


def sam_parts(model: nn.Module, family: str, spec: dict | None = None, with_decoder: bool = True) -> SamParts:
    """The parts of a loaded model of the family's own package."""
    return PARTS[family](model, spec, with_decoder)


def _check_name(held: str, name: str, checkpoint: Path) -> None:
    """The encoder's name must be what the file holds (an official name counts as its architecture)."""
    from sam_distill.sam.official import TEACHERS

    if held not in (name, TEACHERS.get(name).arch if name in TEACHERS else None):
        raise DistillError(f"encoder checkpoint {checkpoint} holds a {held} encoder but the encoder is named "
                           f"{name!r}; set the encoder name to {held}")


def _check_size(size: int, image_size: int, checkpoint: Path | str) -> None:
    if size != image_size:
        raise DistillError(f"encoder {checkpoint} is for {size} px inputs, but image_size is {image_size}; "
                           f"set image_size to {size}")


def _hq_spec(model: nn.Module, name: str) -> dict:
    spec = {"vit_dim": int(model.mask_decoder.compress_vit_feat[0].weight.shape[0])}
    if isinstance(model.image_encoder, hq_models.HqStudentEncoder):
        spec["student"] = name
    return spec


def _rebuild(name: str, image_size: int, spec: dict) -> tuple[nn.Module, dict]:
    """A saved head's SAM from its spec, random weights (the head's file holds them all)."""
    if spec["family"] == "sam2":
        return sam2_models.instantiate_model(spec["config"], f"saved config of encoder {name}"), spec
    if spec.get("student"):
        encoder = hq_models.HqStudentEncoder(spec["student"], spec["vit_dim"], image_size)
        return hq_models.hq_sam(encoder, spec["vit_dim"], image_size), spec
    return hq_models.build_hq_model(name, image_size), spec


def load_family_model(name: str, image_size: int, checkpoint: Path | None = None,
                      spec: dict | None = None) -> tuple[nn.Module, str, dict]:
    """(model of its family's package, family, spec) for an instance method: ``name`` is a SAM, SAM 2 or HQ-SAM
    architecture (random weights) or, with ``checkpoint``, what that file holds (an official file or a distilled
    model of any family); ``spec`` (from a saved head) rebuilds a SAM 2 or HQ-SAM without the checkpoint."""
    from sam_distill.sam.model_file import build_sam_for

    family = (spec or {}).get("family", "sam")
    if family != "sam":
        model, spec = _rebuild(name, image_size, spec)
    elif checkpoint is not None and sam2_models.file_holds_sam2(Path(checkpoint)):
        model, held, config = sam2_models.load_sam2_file(Path(checkpoint))
        _check_name(held, name, checkpoint)
        family, spec = "sam2", {"config": config}
    elif checkpoint is not None and hq_models.file_holds_hq(Path(checkpoint)):
        model, held = hq_models.load_hq_file(Path(checkpoint))
        _check_name(held, name, checkpoint)
        family, spec = "hq", _hq_spec(model, held)
    elif checkpoint is None and sam2_models.is_sam2_arch(name):
        model = sam2_models.build_sam2_model(name)
        family, spec = "sam2", {"config": sam2_models.model_config(sam2_models.sam2_config(name))}
    elif checkpoint is None and hq_models.is_hq_arch(name):
        model = hq_models.build_hq_model(name, image_size)
        family, spec = "hq", _hq_spec(model, name)
    else:
        return build_sam_for(name, image_size, checkpoint), "sam", {}
    size = int(model.image_size) if family == "sam2" else int(model.image_encoder.img_size)
    _check_size(size, image_size, checkpoint or name)
    return model, family, {key: value for key, value in spec.items() if key != "family"}


def build_sam_parts(name: str, image_size: int, checkpoint: Path | None = None, spec: dict | None = None,
                    with_decoder: bool = True) -> SamParts:
    """The parts of ``load_family_model``'s model."""
    model, family, spec = load_family_model(name, image_size, checkpoint, spec)
    return sam_parts(model, family, spec, with_decoder)
