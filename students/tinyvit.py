"""MobileSAM's TinyViT-5M image encoder, built from ultralytics' implementation.

The configuration is MobileSAM's (``build_mobile_sam``), so the state dict matches MobileSAM's
``image_encoder.*`` key for key and shape for shape.
"""
from __future__ import annotations

import torch.nn as nn

from sam_distill.students import STUDENTS

TINYVIT_5M = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
)


@STUDENTS.register("tinyvit_5m")
def tinyvit_5m(name: str, image_size: int = 1024) -> nn.Module:
    from ultralytics.models.sam.modules.tiny_encoder import TinyViT

    model = TinyViT(
        img_size=1024,
        in_chans=3,
        num_classes=1000,
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
        **TINYVIT_5M,
    )
    if image_size != 1024:
        model.set_imgsz([image_size, image_size])
    return model
