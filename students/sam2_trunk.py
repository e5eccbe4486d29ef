"""Trunks for SAM 2 student image encoders: what sam2's ``ImageEncoder`` (trunk → ``FpnNeck``) takes in place of
Hiera. A distilled SAM 2 keeps sam2's own ``ImageEncoder`` and ``FpnNeck`` around the trunk, so its decoder gets
the three maps it was trained on; a Hiera trunk needs nothing but sam2 to load, a timm one needs this module.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.students.timm_student import feature_info

STRIDES = (4, 8, 16, 32)


class TimmTrunk(nn.Module):
    """Any timm backbone with feature maps at strides 4, 8, 16 and 32, as a Hiera does: returns them from high to
    low resolution, and ``channel_list`` from low to high resolution (what ``FpnNeck``'s ``backbone_channel_list``
    must equal)."""

    def __init__(self, backbone: str):
        super().__init__()
        import timm

        indices, self.channel_list = trunk_layout(backbone)
        self.body = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def trunk_layout(backbone: str) -> tuple[list[int], list[int]]:
    """(timm ``out_indices`` of the stride-4…32 maps, ``channel_list``) of a ``TimmTrunk``, from one look at the
    backbone (writing a student's config needs the channels without building the trunk)."""
    info = feature_info(backbone)
    reductions = info.reduction()
    indices = [reductions.index(stride) for stride in STRIDES if stride in reductions]
    if len(indices) != len(STRIDES):
        raise DistillError(f"timm model {backbone!r} has feature maps at strides {reductions}; a SAM 2 student "
                           f"trunk needs {', '.join(map(str, STRIDES))}")
    return indices, [info.channels()[index] for index in reversed(indices)]


# sam2's own Hiera at sizes below the published ones (SAM 2.1 tiny is width 96, 12 blocks): no dependency but sam2.
# A global-attention block may not open a stage (those pool queries), hence the stage layouts.
HIERA_STUDENTS = {
    "hiera_nano": {"embed_dim": 32, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
    "hiera_micro": {"embed_dim": 48, "num_heads": 1, "stages": [1, 2, 4, 1], "global_att_blocks": [5]},
}


def sam2_trunk_config(name: str) -> tuple[dict, list[int]]:
    """The hydra config of a student trunk by name (``hiera_nano``, ``hiera_micro`` or ``timm_<model>``) and its
    ``channel_list``."""
    if name in HIERA_STUDENTS:
        spec = HIERA_STUDENTS[name]
        width = spec["embed_dim"]
        return ({"_target_": "sam2.modeling.backbones.hieradet.Hiera", **spec,
                 "window_pos_embed_bkg_spatial_size": [7, 7]}, [width * 8, width * 4, width * 2, width])
    if name.startswith("timm_"):
        backbone = name[len("timm_"):]
        return {"_target_": f"{__name__}.TimmTrunk", "backbone": backbone}, trunk_layout(backbone)[1]
    raise DistillError(f"unknown SAM 2 student {name!r}; choose {', '.join(HIERA_STUDENTS)} or timm_<model> "
                       "(a timm backbone with stride 4-32 feature maps, e.g. timm_mobilenetv3_large_100)")
