"""The sam_cls kind's bench entry: the image encoder as 'encoder'; everything mode's point-grid decoding plus the
mask classifier as 'decoder' (the generator's thresholds, NMS and RLE encoding are bookkeeping, not timed)."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.eval.bench import ROLE_STUDENT, BenchModel, chained
from sam_distill.methods.sam_cls.model import load_sam_cls


def bench_sam_cls(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    model = load_sam_cls(path).to(device)
    model.sam.requires_grad_(False)
    size, settings = model.image_size, model.config["generator"]
    pixels = torch.randn(1, 3, size, size, device=device)
    encoder, decoder = chained(torch.no_grad()(lambda: model.parts.encode(pixels)), model.decode_and_classify)
    classify = ("+ pooled-feature MLP on each point's mask" if model.classifier is not None
                else "(CLIP crop classification needs the CLIP checkpoint: not timed)")
    classifier_params = sum(p.numel() for p in model.classifier.parameters()) if model.classifier is not None else 0
    return BenchModel(name=f"SAM-cls {model.config['classifier']} ({path.name})", kind="sam_cls", format="pytorch",
                      role=ROLE_STUDENT, path=path,
                      params=sum(p.numel() for p in model.parts.parameters()) + classifier_params,
                      image_size=size, encoder=encoder, decoder=decoder,
                      sam=model.sam if model.family == "sam" else None,
                      notes=[f"image encoder as 'encoder'; everything mode's {settings['points_per_side']}² point grid "
                             f"through SAM's decoder ({settings['points_per_batch']} points a batch) {classify} as "
                             f"'decoder'"])
