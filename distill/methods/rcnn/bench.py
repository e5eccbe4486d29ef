"""The rcnn kind's bench entry (SAM-det / SAM-seg): the image encoder as 'encoder'; pyramid + R-CNN heads (+ SAM's
decoder on each detected box, for SAM-det) on its output as 'decoder'.

The decoder phase's cost grows with the detections it masks, so it is timed at a fixed load (``at_detection_cap``):
every detection up to the R-CNN heads' cap (Mask2Former: every query)."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.eval.bench import ROLE_STUDENT, BenchModel, at_detection_cap, chained
from sam_distill.methods.rcnn.model import DISPLAY_NAMES, load_rcnn


def bench_rcnn(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    model, _ = load_rcnn(path)
    model = model.to(device).eval().requires_grad_(False)
    load = (f"all {model.mask2former.num_queries} queries" if model.mask2former is not None
            else at_detection_cap(model.roi_heads))
    size = int(model.image_size)
    pixels = torch.randn(1, 3, size, size, device=device)
    encoder, decoder = chained(torch.no_grad()(lambda: model.encode(pixels)),
                               torch.no_grad()(lambda features: model.predict_from_features(features, 0.0)))
    masks = "SAM's decoder on each box" if model.sam_masks else "Mask R-CNN's mask head"
    return BenchModel(name=f"{DISPLAY_NAMES[model.method]} ({path.name})", kind=model.method, format="pytorch",
                      role=ROLE_STUDENT, path=path, params=sum(p.numel() for p in model.parameters()), image_size=size,
                      encoder=encoder, decoder=decoder,
                      notes=[f"'decoder' = pyramid + R-CNN heads + {masks} on the detections of a random input: {load}"])
