"""Parity of exported files against PyTorch on real inputs: embedding differences and mask IoU for point and box
prompts, each file run in its own runtime (onnxruntime, LiteRT, ExecuTorch, CoreML on macOS) and paired with the
fp32 file of the other role in the same format, so the figure is that file's own cost.

fp32 files must compute what PyTorch computes (``Tolerance.embedding_max_abs``, ``Tolerance.mask_iou``). A
reduced-precision file (fp16, INT8) gets a verdict instead: it passes when it loses at most
``Tolerance.max_mask_iou_loss`` of mask IoU against PyTorch beyond what the fp32 file of its format loses."""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from sam_distill.core.images import find_images, load_rgb, make_synthetic_images
from sam_distill.export.registry import ExportedFile, ExportOptions, Tolerance
from sam_distill.export.runtime import PromptPredictor, SamLiteRTPredictor, SamOnnxPredictor


def sample_prompts(image_hw: tuple[int, int], count: int, seed: int) -> list[dict]:
    """``count`` point prompts and ``count`` box prompts in pixel coordinates, deterministic per seed."""
    rng = np.random.default_rng(seed)
    height, width = image_hw
    prompts = []
    for _ in range(count):
        prompts.append({"point_coords": rng.uniform([0, 0], [width, height], size=(1, 2)), "point_labels": np.array([1])})
        corner = rng.uniform([0, 0], [width * 0.6, height * 0.6])
        prompts.append({"box": np.concatenate([corner, corner + rng.uniform([width * 0.2, height * 0.2], [width * 0.4, height * 0.4])])})
    return prompts


def parity_images(options: ExportOptions, image_size: int) -> tuple[list[np.ndarray], list[str]]:
    """The given images (first ``parity_count``) or synthetic ones of a non-square size, so padding is exercised."""
    if options.parity_images is not None:
        paths = find_images(options.parity_images)[: options.parity_count]
        return [load_rgb(p) for p in paths], [str(p) for p in paths]
    with tempfile.TemporaryDirectory() as folder:
        paths = make_synthetic_images(Path(folder), options.parity_count, size=int(image_size * 0.75), seed=7)
        return [load_rgb(p) for p in paths], [f"synthetic:{p.name}" for p in paths]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


class TorchReference:
    """PyTorch's embeddings and ``SamPredictor`` masks for every image and prompt, computed once."""

    def __init__(self, sam: Sam, images: list[np.ndarray], prompts_per_image: int = 2):
        predictor = SamPredictor(sam)
        self.images = images
        self.embeddings, self.prompts, self.masks = [], [], []
        with torch.inference_mode():
            for index, image in enumerate(images):
                predictor.set_image(image)
                self.embeddings.append(predictor.features.numpy())
                prompts = sample_prompts(image.shape[:2], prompts_per_image, seed=index)
                self.prompts.append(prompts)
                self.masks.append([predictor.predict(**p, multimask_output="box" not in p)[0] for p in prompts])


def open_pair(file_format: str, encoder: Path, decoder: Path) -> PromptPredictor:
    """A ``SamPredictor``-like object running an exported pair in its format's own runtime."""
    if file_format in ("onnx", "ort"):
        return SamOnnxPredictor(encoder, decoder)
    if file_format == "tflite":
        return SamLiteRTPredictor(encoder, decoder)
    if file_format == "pte":
        from sam_distill.export.executorch import SamExecuTorchPredictor

        return SamExecuTorchPredictor(encoder, decoder)
    if file_format == "coreml":
        from sam_distill.export.coreml import SamCoreMLPredictor

        return SamCoreMLPredictor(encoder, decoder)
    raise ValueError(f"no runtime for {file_format} files")


def pair_parity(reference: TorchReference, predictor: PromptPredictor,
                embeddings: list[np.ndarray] | None = None) -> tuple[dict, list[np.ndarray]]:
    """Figures for one pair; ``embeddings`` (from the fp32 encoder) skips running the pair's encoder."""
    max_abs, mean_abs, ious = [], [], {"point": [], "box": []}
    computed = []
    for index, image in enumerate(reference.images):
        if embeddings is None:
            predictor.set_image(image)
        else:
            predictor.set_embeddings(embeddings[index], image.shape[:2])
        computed.append(predictor.embeddings)
        difference = np.abs(predictor.embeddings - reference.embeddings[index])
        max_abs.append(float(difference.max()))
        mean_abs.append(float(difference.mean()))
        for prompt, torch_masks in zip(reference.prompts[index], reference.masks[index]):
            masks = predictor.predict(**prompt, multimask_output="box" not in prompt)[0]
            kind = "box" if "box" in prompt else "point"
            ious[kind].extend(mask_iou(m, t) for m, t in zip(masks, torch_masks))
    result = {"embedding_max_abs": max(max_abs), "embedding_mean_abs": float(np.mean(mean_abs))}
    for kind, values in ious.items():
        result[f"{kind}_mask_iou"] = float(np.mean(values))
        result[f"{kind}_mask_iou_min"] = float(np.min(values))
    return result, computed


PAIRED_FORMATS = ("onnx", "ort", "tflite", "pte", "coreml")


def checked_export(sam: Sam, info, files: list[ExportedFile], options: ExportOptions, out: Path, runtime: str,
                   log=print, extra_manifest: dict | None = None):
    """What a SAM exporter returns once its files are written: every file run in ``runtime`` against PyTorch on the
    parity images, the manifest sections SAM exports share (plus ``extra_manifest``), and the fp32 failure line."""
    from sam_distill.export.onnx_export import sam_manifest

    return parity_checked(files, options, out, int(sam.image_encoder.img_size), lambda images: TorchReference(sam, images),
                          {**sam_manifest(sam, info, out), **(extra_manifest or {})}, log, runtime=runtime)


def parity_checked(files: list[ExportedFile], options: ExportOptions, out: Path, image_size: int,
                   make_reference: Callable[[list[np.ndarray]], TorchReference], manifest: dict, log=print,
                   against: str = "PyTorch", runtime: str = "onnxruntime",
                   opener: Callable[[str, Path, Path], PromptPredictor] = open_pair):
    """What an exporter returns once its files are written: every file run in ``runtime`` (``opener``) against the
    reference on the parity images, its ``manifest``, and the fp32 failure line."""
    from sam_distill.export.registry import Exported

    log(f"checking parity in {runtime} against {against} ...")
    images, names = parity_images(options, image_size)
    check_parity(files, make_reference(images), options.tolerance, opener)
    return Exported(files, manifest=manifest, parity={"images": names},
                    failure=fp32_failure(files, options.tolerance, out / "parity.json"))


def check_parity(files: list[ExportedFile], reference: TorchReference, tolerance: Tolerance,
                 opener: Callable[[str, Path, Path], PromptPredictor] = open_pair) -> None:
    """Fill ``file.parity`` for every file of a format with a runtime here; each file pairs with the fp32 file of
    the other role in its own format. Reduced-precision files get a verdict against their format's fp32 pair.
    ``opener`` runs a pair (SAM's pairs by default; a SAM 2 export passes its own)."""
    for file_format in dict.fromkeys(f.format for f in files if f.format in PAIRED_FORMATS):
        group = [f for f in files if f.format == file_format and f.parity is None]
        fp32 = {f.role: f.path for f in group if f.precision == "fp32"}
        if set(fp32) != {"encoder", "decoder"}:
            continue  # nothing to compare against (e.g. an engine-only export)
        figures, fp32_embeddings = pair_parity(reference, opener(file_format, fp32["encoder"], fp32["decoder"]))
        for file in group:
            if file.precision == "fp32":
                result = dict(figures)
                partner = fp32["decoder" if file.role == "encoder" else "encoder"]
            elif file.role == "encoder":
                result, _ = pair_parity(reference, opener(file_format, file.path, fp32["decoder"]))
                partner = fp32["decoder"]
            else:
                result, _ = pair_parity(reference, opener(file_format, fp32["encoder"], file.path), fp32_embeddings)
                partner = fp32["encoder"]
            if file.role == "decoder":  # the embeddings came from the fp32 encoder: not this file's figure
                result = {k: v for k, v in result.items() if not k.startswith("embedding")}
            result["paired_with"] = Path(partner).name
            if file.precision.startswith("fp32"):
                result["within_tolerance"] = not failures(result, tolerance)
            else:
                problems = reduced_precision_failures(result, figures, tolerance)
                result["verdict"] = "fail" if problems else "pass"
                if problems:
                    result["verdict_reason"] = "; ".join(problems)
            file.parity = result


def failures(result: dict, tolerance: Tolerance) -> list[str]:
    found = []
    if result.get("embedding_max_abs", 0.0) > tolerance.embedding_max_abs:
        found.append(f"embedding max abs diff {result['embedding_max_abs']:.3g} > {tolerance.embedding_max_abs:g}")
    for kind in ("point", "box"):
        if result[f"{kind}_mask_iou"] < tolerance.mask_iou:
            found.append(f"{kind} mask IoU {result[f'{kind}_mask_iou']:.4f} < {tolerance.mask_iou:g}")
    return found


def reduced_precision_failures(result: dict, fp32: dict, tolerance: Tolerance) -> list[str]:
    """Why a reduced-precision file loses more mask IoU against PyTorch than the allowed loss beyond its fp32 pair."""
    found = []
    for kind in ("point", "box"):
        lost = fp32[f"{kind}_mask_iou"] - result[f"{kind}_mask_iou"]
        if lost > tolerance.max_mask_iou_loss:
            found.append(f"{kind} mask IoU {result[f'{kind}_mask_iou']:.3f} against fp32's "
                         f"{fp32[f'{kind}_mask_iou']:.3f}: {lost:.3f} lost > {tolerance.max_mask_iou_loss:g}")
    return found


def verdict_failures(parity_files: dict) -> list[str]:
    """One entry per reduced-precision file that failed its verdict: its name and why."""
    return [f"{name} ({figures['verdict_reason']})" for name, figures in parity_files.items()
            if figures.get("verdict") == "fail"]


def fp32_failure(files: list[ExportedFile], tolerance: Tolerance, parity_path: Path) -> str | None:
    """The line that fails the export when an fp32 file does not compute what PyTorch computes (INT8 and fp16
    files only report their cost), or None."""
    for file in files:
        if file.parity and file.precision.startswith("fp32"):
            problems = failures(file.parity, tolerance)
            if problems:
                return (f"fp32 parity of {Path(file.path).name} failed: {'; '.join(problems)} "
                        f"(figures in {parity_path}; tolerances: --max-embedding-diff, --min-mask-iou)")
    return None
