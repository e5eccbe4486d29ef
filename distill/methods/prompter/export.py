"""The prompter kind's exporter (``distill export prompter.pt``): encoder, head and decoder ONNX graphs that chain in
onnxruntime (``onnx.py``), checked together against PyTorch.

``--int8`` and ``--fp16`` write further chains in their own folders (``int8-dynamic/``, ``fp16/``: each with its
``prompter.json``, so ``run_onnx(folder, image)`` runs it as it runs the fp32 one), each with its parity figures:

* ``--int8``: onnxruntime dynamic INT8 of all three graphs (``--int8-ops``, MatMul only by default);
* ``--fp16``: the encoder and decoder converted by onnxruntime's fp16 converter; the head stays fp32, since the
  anchor head's RoI/NMS graph does not load after that converter, and the head is light.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from sam_distill.core.fileio import atomic_write_json, read_json
from sam_distill.export.onnx_export import onnx_file, to_fp16
from sam_distill.export.quantize import quantize_dynamic_file
from sam_distill.export.registry import Exported, ExportOptions, ExportSource, Tolerance
from sam_distill.methods.prompter.onnx import export_prompter_onnx, onnx_parity, parity_sample

ROLES = ("encoder", "head", "decoder")
NOTES = {"encoder": "image 1x3xSxS (SAM preprocessing) -> image_embeddings and the tapped feature maps",
         "head": "aggregator + prompter head on the taps -> classes or boxes, and prompt embeddings",
         "decoder": "image_embeddings + prompts nxKx256 -> low-res mask logits and IoU"}


def _verdict(figures: dict, tolerance: Tolerance) -> dict:
    """The chain's figures with whether they meet the fp32 tolerance: every class agrees, every mask IoU at least
    ``tolerance.mask_iou``."""
    within = figures["class_agreement"] == 1.0 and figures.get("mask_iou_min", 1.0) >= tolerance.mask_iou
    return {**figures, "within_tolerance": within}


def _reduced_verdict(figures: dict, fp32: dict, tolerance: Tolerance) -> dict:
    """A reduced-precision chain passes when it keeps every detection of the fp32 chain and loses at most
    ``tolerance.max_mask_iou_loss`` of mean mask IoU against PyTorch beyond the fp32 chain."""
    problems = []
    if figures["detections_onnx"] != fp32["detections_onnx"] or figures["class_agreement"] < fp32["class_agreement"]:
        problems.append(f"{figures['detections_onnx']} detections, class agreement {figures['class_agreement']:.3f} "
                        f"against fp32's {fp32['detections_onnx']} and {fp32['class_agreement']:.3f}")
    lost = fp32.get("mask_iou_mean", 1.0) - figures.get("mask_iou_mean", 0.0)
    if lost > tolerance.max_mask_iou_loss:
        problems.append(f"mean mask IoU {figures.get('mask_iou_mean', 0.0):.3f} against fp32's "
                        f"{fp32.get('mask_iou_mean', 1.0):.3f}: {lost:.3f} lost > {tolerance.max_mask_iou_loss:g}")
    verdict = {"verdict": "fail" if problems else "pass"}
    return {**figures, **verdict, **({"verdict_reason": "; ".join(problems)} if problems else {})}


def _variants(options: ExportOptions) -> dict[str, dict]:
    """precision -> {role: convert(source, target) or None to keep the fp32 graph}."""
    variants = {}
    if options.int8:
        ops = options.int8_ops or "matmul"
        variants["int8-dynamic"] = {role: lambda s, t, ops=ops: quantize_dynamic_file(s, t, ops) for role in ROLES}
    if options.fp16:
        variants["fp16"] = {"encoder": to_fp16, "head": None, "decoder": to_fp16}
    return variants


def export_onnx(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    model, classes = source.load()
    head = model.config["head"]
    log(f"exporting the {head} prompter ...")
    report = export_prompter_onnx(model, out, classes)
    files = [onnx_file(Path(report["files"][role]), role, "fp32", NOTES[role]) for role in ROLES]
    chains = {"prompter": _verdict(report["parity"], options.tolerance)}
    for precision, converts in _variants(options).items():
        folder = out / precision
        folder.mkdir(parents=True, exist_ok=True)
        for role, convert in converts.items():
            target = folder / f"{role}.onnx"
            if convert is None:
                shutil.copyfile(out / f"{role}.onnx", target)
                files.append(onnx_file(target, role, "fp32", f"kept fp32 in the {precision} chain; {NOTES[role]}"))
            else:
                files.append(onnx_file(convert(out / f"{role}.onnx", target), role, precision, NOTES[role]))
        figures = onnx_parity(model, _chain_manifest(out, folder, precision), parity_sample(model.image_size))
        chains[f"prompter.{precision}"] = _reduced_verdict(figures, chains["prompter"], options.tolerance)
        atomic_write_json(folder / "prompter.json", {**read_json(folder / "prompter.json"), "parity": figures})
    fp32 = chains["prompter"]
    failure = None if fp32["within_tolerance"] else (
        f"prompter ONNX files disagree with PyTorch (class agreement {fp32['class_agreement']:.3f}, "
        f"min mask IoU {fp32.get('mask_iou_min', float('nan')):.3f}); see {out / 'parity.json'}")
    return Exported(files, manifest={"source": {"model": "rsprompter", "head": head, "image_size": model.image_size},
                                     "prompter": "prompter.json"},
                    parity_files=chains, failure=failure)


def _chain_manifest(out: Path, folder: Path, precision: str) -> Path:
    """``folder/prompter.json``: the fp32 chain's, naming this precision; returns the folder."""
    manifest = read_json(out / "prompter.json")
    manifest.pop("parity", None)
    atomic_write_json(folder / "prompter.json", {**manifest, "precision": precision})
    return folder
