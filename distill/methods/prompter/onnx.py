"""Prompter → ONNX as three graphs that chain in onnxruntime exactly as the PyTorch model runs:

* ``encoder.onnx``: image 1×3×S×S → image_embeddings 1×256×G×G, the other maps the SAM's decoder takes (a SAM 2's
  high_res_feats_0/1, an HQ-SAM's interm_embed_0; ``decoder_features`` in the manifest) and the tapped feature maps
  (tap0, tap1, ...)
* ``head.onnx`` (aggregator + prompter), from the taps:
  query prompter → class_logits 1×N×(C+1), prompts 1×N×K×256, mask_prompts 1×N×4G×4G (its last layer's coarse
  masks, SAM's dense prompt);
  anchor prompter → boxes n×4, scores n, labels n, prompts n×K×256 (pyramid, RPN, RoI heads with their NMS and
  the prompt head all inside the graph)
* ``decoder.onnx``: image_embeddings + the other maps + prompts n×K×256 (n dynamic) + mask_input n×4G×4G +
  has_mask_input 1 → low-res mask logits n×4G×4G, iou n: the family's mask decoder with its prompt encoder's dense
  part inside, taking mask_input as SAM's official ONNX decoder does (has_mask_input 0: the no-mask embedding).

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
from sam_distill.sam.families import ImageFeatures

OPSET = 17


class _Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        features, taps = self.model.encoder(image)
        return (features.embed, *(features.extra[name] for name in sorted(features.extra)), *taps)


class QueryHeadGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *taps):
        logits, prompts, coarse = self.model.head(self.model.aggregator(list(taps)))[-1]
        return logits, prompts, coarse


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
    def __init__(self, model, feature_names: list[str]):
        super().__init__()
        self.model, self.feature_names = model, feature_names

    def forward(self, image_embeddings, *inputs):
        *extra, prompts, mask_input, has_mask_input = inputs
        encoder = self.model.prompt_encoder
        dense = (has_mask_input * encoder.mask_downscaling(mask_input[:, None])
                 + (1 - has_mask_input) * encoder.no_mask_embed.weight.reshape(1, -1, 1, 1))
        features = ImageFeatures(image_embeddings, dict(zip(self.feature_names, extra)))
        masks, iou = self.model.sam.decode(features, prompts, dense)
        return masks[:, 0], iou[:, 0]


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> None:
    module.eval()  # the exporter restores the wrapper's mode afterwards: it must be eval, or the model ends in training mode
    torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
                      opset_version=OPSET, dynamo=False)
    _float_grid_samples(path)


def _float_grid_samples(path: Path) -> None:
    """transformers' deformable attention traces its reference points as float64 constants, so the exported
    GridSample gets a double grid beside a float image, which onnxruntime has no kernel for: cast the grid."""
    import onnx

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    double = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "GridSample" and node.input[1] in double:
            cast = f"{node.input[1]}_as_float"
            nodes.append(onnx.helper.make_node("Cast", [node.input[1]], [cast], to=onnx.TensorProto.FLOAT))
            node.input[1] = cast
        nodes.append(node)
    if len(nodes) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))


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
        features, taps = model.encoder(image)
    embedding, feature_names = features.embed, sorted(features.extra)
    tap_names = [f"tap{i}" for i in range(len(taps))]
    paths = {name: out_dir / f"{name}.onnx" for name in ("encoder", "head", "decoder")}
    _export(_Encoder(model), (image,), paths["encoder"], ["image"], ["image_embeddings", *feature_names, *tap_names],
            {})
    kind = model.config["head"]
    if kind == "query":
        head_outputs = ["class_logits", "prompts", "mask_prompts"]
        _export(QueryHeadGraph(model), tuple(taps), paths["head"], tap_names, head_outputs, {})
    elif kind == "anchor":
        head_outputs = ["boxes", "scores", "labels", "prompts"]
        _export(AnchorHeadGraph(model), tuple(taps), paths["head"], tap_names, head_outputs,
                {name: {0: "detections"} for name in head_outputs})
    else:
        raise DistillError(f"no ONNX export for prompter head {kind!r}")
    prompts, low_res = torch.zeros(3, model.head.prompts_per_object, 256), 4 * embedding.shape[-1]
    extra = tuple(features.extra[name] for name in feature_names)
    _export(_Decoder(model, feature_names), (embedding, *extra, prompts, torch.zeros(3, low_res, low_res), torch.ones(1)),
            paths["decoder"], ["image_embeddings", *feature_names, "prompts", "mask_input", "has_mask_input"],
            ["low_res_masks", "iou_predictions"],
            {name: {0: "prompts"} for name in ("prompts", "mask_input", "low_res_masks", "iou_predictions")})
    manifest = {"format": "sam-distill/prompter-onnx", "head": kind, "image_size": size, "taps": tap_names,
                "sam_family": model.sam.family, "decoder_features": feature_names,
                "dense_prompt": kind == "query" and bool(model.head.dense_prompt),
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
    names = manifest.get("decoder_features", [])
    extra = dict(zip(names, encoded[1:1 + len(names)]))
    head = dict(zip(manifest["head_outputs"], session["head"].run(None, dict(zip(manifest["taps"],
                                                                                  encoded[1 + len(names):])))))
    prompts = head["prompts"][0] if manifest["head"] == "query" else head["prompts"]
    low_res = 4 * encoded[0].shape[-1]
    mask_input = head["mask_prompts"][0] if manifest.get("dense_prompt") else np.zeros(
        (len(prompts), low_res, low_res), np.float32)
    masks, iou = session["decoder"].run(None, {"image_embeddings": encoded[0], **extra, "prompts": prompts,
                                               "mask_input": mask_input.astype(np.float32),
                                               "has_mask_input": np.array([float(manifest.get("dense_prompt", False))],
                                                                          np.float32)})
    return {**head, "low_res_masks": masks, "iou_predictions": iou}


def onnx_parity(model, out_dir: Path, image: torch.Tensor) -> dict:
    """onnxruntime vs PyTorch on one image: mask IoU of the binarised masks and class agreement."""
    onnx_out = run_onnx(out_dir, image.numpy())
    with torch.no_grad():
        features, taps = model.encoder(image)
        mask_prompts = None
        if model.config["head"] == "query":
            logits, prompts, coarse = QueryHeadGraph(model)(*taps)
            torch_classes, onnx_classes = logits.argmax(-1)[0].numpy(), onnx_out["class_logits"].argmax(-1)[0]
            prompts, mask_prompts = prompts[0], coarse[0] if model.head.dense_prompt else None
        else:
            boxes, _, labels, prompts = AnchorHeadGraph(model)(*taps)
            torch_classes, onnx_classes = labels.numpy(), onnx_out["labels"]
        masks, _ = model.decode(features, prompts, mask_prompts)
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
