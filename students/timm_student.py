"""Any timm backbone as a SAM image encoder: ``timm_<model>`` (e.g. ``timm_efficientvit_b0``).

The backbone runs with ``features_only``; its stride-8/16/32 maps are projected, resampled to
stride 16 and summed (a one-level FPN), then a neck shaped like SAM's (1×1 conv, LayerNorm2d,
3×3 conv, LayerNorm2d) gives the 256-channel embedding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d

from sam_distill.core.errors import DistillError
from sam_distill.students import STUDENTS

EMBED_DIM = 256
EMBED_STRIDE = 16


def feature_info(backbone: str):
    """timm's ``FeatureInfo`` of a backbone's feature maps (``features_only``: ``reduction()``, ``channels()``), or
    one line when timm has no model of that name."""
    import timm

    if backbone not in timm.list_models():
        raise DistillError(
            f"timm has no model {backbone!r}; list them with `python -c \"import timm; print(timm.list_models())\"`"
        )
    return timm.create_model(backbone, pretrained=False, features_only=True).feature_info


class TimmStudent(nn.Module):
    # Convolutions and a resampled FPN: nothing is tied to the input size, so a model trained at one size runs at
    # another (``distill eval miou --image-size``).
    any_input_size = True

    def __init__(self, backbone: str, image_size: int = 1024, fuse_dim: int = 128):
        super().__init__()
        import timm

        reductions = feature_info(backbone).reduction()
        # Keep the maps from stride 8 to 32: fine enough for masks, coarse enough to be cheap.
        indices = tuple(i for i, r in enumerate(reductions) if 8 <= r <= 32)
        if not indices:
            raise DistillError(f"timm model {backbone!r} has no feature map at stride 8-32 (it has {reductions})")
        self.backbone = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=indices)
        self.backbone_name = backbone
        channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, fuse_dim, kernel_size=1) for c in channels)
        self.neck = nn.Sequential(
            nn.Conv2d(fuse_dim, EMBED_DIM, kernel_size=1, bias=False),
            LayerNorm2d(EMBED_DIM),
            nn.Conv2d(EMBED_DIM, EMBED_DIM, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(EMBED_DIM),
        )
        self.img_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[-2] // EMBED_STRIDE, x.shape[-1] // EMBED_STRIDE)
        fused = 0
        for feature, lateral in zip(self.backbone(x), self.lateral):
            feature = lateral(feature)
            if feature.shape[-2:] != size:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            fused = fused + feature
        return self.neck(fused)


@STUDENTS.register("timm_", family=True)
def timm_student(name: str, image_size: int = 1024) -> nn.Module:
    return TimmStudent(name[len("timm_"):], image_size=image_size)
