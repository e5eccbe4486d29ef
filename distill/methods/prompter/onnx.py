"""Prompter → ONNX as three graphs that chain in onnxruntime exactly as the PyTorch model runs:

* ``encoder.onnx``: image 1×3×S×S → image_embeddings 1×256×G×G and the tapped feature maps (tap0, tap1, ...)
* ``head.onnx`` (aggregator + prompter), from the taps:
  query prompter → class_logits 1×N×(C+1), prompts 1×N×K×256;
  anchor prompter → boxes n×4, scores n, labels n, prompts n×K×256 (RPN, RoI heads with their NMS, prompt head
  and SAM's box-corner encoding all inside the graph)
* ``decoder.onnx``: image_embeddings + prompts n×K×256 (n dynamic) → low-res mask logits n×4G×4G, iou n
  (SAM's mask decoder with the prompt encoder's no-mask embedding and dense positional encoding baked in).

``export_prompter_onnx`` writes them with ``prompter.json`` (classes, sizes, output names) and checks parity.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json

OPSET = 17


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        embedding, taps = self.model.encoder(image)
        return (embedding, *taps)


class QueryHeadGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *taps):
        return self.model.head(self.model.aggregator(list(taps)))


class AnchorHeadGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *taps):
        levels = self.model.head.levels(self.model.aggregator(list(taps)))
        detection = self.model.head.detect(levels)[0]
        prompts = self.model.head.prompts(levels, [detection["boxes"]])[0]
        return detection["boxes"], detection["scores"], detection["labels"], prompts


class _Decoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, prompts):
        return self.model.decode(image_embeddings, prompts)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    module.eval()  # the exporter restores the wrapper's mode afterwards: it must be eval, or the model ends in training mode
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=OPSET, dynamo=False)


def parity_sample(image_size: int) -> torch.Tensor:
    """The input the ONNX chains are checked on (a fixed random image, as the graphs were traced on)."""
    return torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))


def export_prompter_onnx(model, out_dir: Path, classes: list[dict] | None = None, check: bool = True,
                         sample: torch.Tensor | None = None) -> dict:
    """Write encoder/head/decoder ONNX files for an RSPrompterModel; return their paths and the parity report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    size = model.image_size
    image = sample if sample is not None else parity_sample(size)
    with torch.no_grad():
        embedding, taps = model.encoder(image)
    tap_names = [f"tap{i}" for i in range(len(taps))]
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "head", "decoder")}
    _export(_Encoder(model), (image,), paths["encoder"], ["image"], ["image_embeddings", *tap_names], {})
    kind = model.config["head"]
    if kind == "query":
        head_outputs = ["class_logits", "prompts"]
        _export(QueryHeadGraph(model), tuple(taps), paths["head"], tap_names, head_outputs, {})
    elif kind == "anchor":
        head_outputs = ["boxes", "scores", "labels", "prompts"]
        _export(AnchorHeadGraph(model), tuple(taps), paths["head"], tap_names, head_outputs,
                {name: {0: "detections"} for name in head_outputs})
    else:
        raise DistillError(f"no ONNX export for prompter head {kind!r}")
    prompts = torch.zeros(3, model.head.prompts_per_object, 256)
    _export(_Decoder(model), (embedding, prompts), paths["decoder"], ["image_embeddings", "prompts"],
            ["low_res_masks", "iou_predictions"],
            {"prompts": {0: "prompts"}, "low_res_masks": {0: "prompts"}, "iou_predictions": {0: "prompts"}})
    manifest = {"format": "sam-distill/prompter-onnx", "head": kind, "image_size": size, "taps": tap_names,
                "head_outputs": head_outputs, "classes": classes or [], "files": {k: p.name for k, p in paths.items()},
                "preprocessing": "SAM: resize longest side, normalise, pad bottom-right"}
    report = {"files": {k: str(p) for k, p in paths.items()}}
    atomic_write_json(out_dir / "prompter.json", manifest)
    if check:
        report["parity"] = manifest["parity"] = onnx_parity(model, out_dir, image)
        atomic_write_json(out_dir / "prompter.json", manifest)
    report["manifest"] = str(out_dir / "prompter.json")
    return report


def run_onnx(out_dir: Path, image: np.ndarray) -> dict[str, np.ndarray]:
    """encoder → head → decoder in onnxruntime for one preprocessed 1×3×S×S image."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "prompter.json").read_text())
    session = {k: ort.InferenceSession(str(out_dir / v), providers=["CPUExecutionProvider"])
               for k, v in manifest["files"].items()}
    encoded = session["encoder"].run(None, {"image": image.astype(np.float32)})
    head = dict(zip(manifest["head_outputs"], session["head"].run(None, dict(zip(manifest["taps"], encoded[1:])))))
    prompts = head["prompts"][0] if manifest["head"] == "query" else head["prompts"]
    masks, iou = session["decoder"].run(None, {"image_embeddings": encoded[0], "prompts": prompts})
    return {**head, "low_res_masks": masks, "iou_predictions": iou}


def onnx_parity(model, out_dir: Path, image: torch.Tensor) -> dict:
    """onnxruntime vs PyTorch on one image: mask IoU of the binarised masks and class agreement."""
    onnx_out = run_onnx(out_dir, image.numpy())
    with torch.no_grad():
        embedding, taps = model.encoder(image)
        if model.config["head"] == "query":
            logits, prompts = QueryHeadGraph(model)(*taps)
            torch_classes, onnx_classes = logits.argmax(-1)[0].numpy(), onnx_out["class_logits"].argmax(-1)[0]
            prompts = prompts[0]
        else:
            boxes, _, labels, prompts = AnchorHeadGraph(model)(*taps)
            torch_classes, onnx_classes = labels.numpy(), onnx_out["labels"]
        masks, _ = model.decode(embedding, prompts)
    same_count = len(torch_classes) == len(onnx_classes)
    report = {"detections_torch": int(len(torch_classes)), "detections_onnx": int(len(onnx_classes)),
              "class_agreement": float(np.mean(torch_classes == onnx_classes)) if same_count and len(torch_classes) else
              float(same_count)}
    if same_count and len(torch_classes):
        ours, theirs = masks.numpy() > 0, onnx_out["low_res_masks"] > 0
        union = (ours | theirs).reshape(len(ours), -1).sum(1)
        inter = (ours & theirs).reshape(len(ours), -1).sum(1)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        report.update(mask_iou_mean=float(iou.mean()), mask_iou_min=float(iou.min()),
                      max_abs_logit_diff=float(np.abs(masks.numpy() - onnx_out["low_res_masks"]).max()))
    return report
