"""The prompter kind's bench entry: encoder + head (the prompts) as the encoder phase, SAM's decoder on those
prompts as the decoder phase.

The decoder phase costs one SAM decoding per prompt, so it is timed at a fixed load (``at_detection_cap``): every
query of the query prompter, every detection up to the anchor prompter's cap. A trained head's scores on noise are
arbitrary; timed at its threshold, one model would decode fifty prompts and the next two."""
from __future__ import annotations

from pathlib import Path

import torch

from sam_distill.eval.bench import ROLE_STUDENT, BenchModel, at_detection_cap, chained
from sam_distill.methods.prompter.model import load_prompter
from sam_distill.methods.prompter.onnx import AnchorHeadGraph, QueryHeadGraph


def prompter_prompts(model, pixels: torch.Tensor):
    """What SAM's decoder takes from the head for one image: (image features, prompt embeddings, the query
    prompter's coarse masks as the dense prompt or None)."""
    features, taps = model.encoder(pixels)
    if model.config["head"] == "query":
        _, prompts, coarse = QueryHeadGraph(model)(*taps)
        return features, prompts[0], coarse[0] if model.head.dense_prompt else None
    return features, AnchorHeadGraph(model)(*taps)[-1], None


def bench_prompter(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    model, _ = load_prompter(path)
    model = model.to(device).eval().requires_grad_(False)  # inference only; the FLOP counter hooks grads otherwise
    head = model.config["head"]
    load = at_detection_cap(model.head.roi_heads) if head == "anchor" else f"all {model.head.num_queries} queries"
    size = int(model.image_size)
    pixels = torch.randn(1, 3, size, size, device=device)
    encoder, decoder = chained(torch.no_grad()(lambda: prompter_prompts(model, pixels)),
                               torch.no_grad()(lambda encoded: model.decode(*encoded)))
    return BenchModel(name=f"{head} prompter ({path.name})", kind="rsprompter", format="pytorch",
                      role=ROLE_STUDENT, path=path, params=sum(p.numel() for p in model.parameters()), image_size=size,
                      encoder=encoder, decoder=decoder,
                      notes=[f"encoder + {head} head as 'encoder'; SAM's decoder on the prompts the head emits for a "
                             f"random input as 'decoder': {load}"])
