"""``distill export``: run the chosen exporters, check parity, write manifest.json and parity.json."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json, sha256_file
from sam_distill.core.images import Preprocessing
from sam_distill.export import coreml, onnx_export, tensorrt  # noqa: F401  (registration side effects)
from sam_distill.export.parity import TorchReference, check_parity, enforce_fp32, parity_images
from sam_distill.export.quantize import check_calibration
from sam_distill.export.registry import EXPORTERS, ExportOptions, Tolerance
from sam_distill.methods.prompter.model import PROMPTER_FORMAT
from sam_distill.methods.rcnn.model import RCNN_FORMAT
from sam_distill.sam.checkpoint import PickledCheckpoint
from sam_distill.sam.model_file import load_model

DEFAULT_TOLERANCE = Tolerance()

TOOLS = ("torch", "onnx", "onnxruntime", "coremltools", "segment-anything", "ultralytics", "sam-distill")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for tool in TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def export_model(model_path: Path, formats: list[str], out: Path, options: ExportOptions, log=print) -> dict:
    """Export ``model_path`` in every format into ``out``; returns the manifest. fp32 parity failures raise."""
    for name in formats:
        EXPORTERS.get(name)  # a one-line error before any work
    if options.int8 and options.calibration is not None:
        check_calibration(options.calibration)
    payload_format = _payload_format(model_path)
    if payload_format == PROMPTER_FORMAT:
        return export_prompter(Path(model_path), formats, Path(out), log)
    if payload_format == RCNN_FORMAT:
        raise DistillError(f"{model_path} is a SAM-det/SAM-seg baseline, which `distill export` does not take: it "
                           f"exports SAM models, YOLO-seg students and RSPrompter prompters")
    try:
        sam, info = load_model(model_path)
    except PickledCheckpoint as err:
        if not err.is_ultralytics:
            raise
        return export_ultralytics(Path(model_path), formats, Path(out), options, log)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in dict.fromkeys(formats):
        log(f"exporting {name} ...")
        files += EXPORTERS.get(name)(sam, info, options, out)
    image_size = int(sam.image_encoder.img_size)
    parity = {"tolerance": vars(options.tolerance), "files": {}}
    if "onnx" in formats:
        log("checking parity against PyTorch ...")
        images, names = parity_images(options, image_size)
        check_parity(files, TorchReference(sam, images), options.tolerance)
        parity["images"] = names
    for file in files:
        if file.parity is not None:
            parity["files"][str(Path(file.path).relative_to(out))] = {"role": file.role, "precision": file.precision, **file.parity}
    manifest = {
        "source": {"path": str(model_path), "sha256": sha256_file(model_path), "model": info.student,
                   "image_size": image_size},
        "preprocessing": {**Preprocessing(image_size).as_dict(), "encoder_input": onnx_export.ENCODER_NOTE,
                          "layout": f"1x3x{image_size}x{image_size} float32 RGB (NCHW)"},
        "files": [f.manifest_entry(out) for f in files],
        "tensorrt": {"commands": tensorrt.trtexec_commands(out),
                     "note": "build on the target board from the static-shape ONNX pair (--static-shapes)"},
        "options": {"formats": formats, "int8": options.int8, "int8_ops": options.int8_ops, "fp16": options.fp16,
                    "opset": options.opset, "static_shapes": options.static_shapes,
                    "calibration": str(options.calibration) if options.calibration else None},
        "tools": tool_versions(),
    }
    atomic_write_json(out / "parity.json", parity)
    atomic_write_json(out / "manifest.json", manifest)
    enforce_fp32(files, options.tolerance, out / "parity.json")
    return manifest


def _payload_format(path: Path) -> str | None:
    """The ``format`` tag of one of our files, read lazily (mmap) so a 2.5 GB SAM costs nothing here."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def export_prompter(model_path: Path, formats: list[str], out: Path, log=print) -> dict:
    """RSPrompter models: encoder (embedding + taps), head and prompt-embedding decoder as ONNX, parity-checked."""
    from sam_distill.methods.prompter.model import load_prompter
    from sam_distill.methods.prompter.onnx import export_prompter_onnx

    if set(formats) != {"onnx"}:
        raise DistillError(f"prompter models export to onnx only (asked for {', '.join(formats)}); use --format onnx")
    model, classes = load_prompter(model_path)
    log(f"exporting the {model.config['head']} prompter ...")
    report = export_prompter_onnx(model, out, classes)
    manifest = {"source": {"path": str(model_path), "sha256": sha256_file(model_path), "model": "rsprompter"},
                "files": [{"file": Path(path).name, "format": "onnx", "role": role, "precision": "fp32"}
                          for role, path in report["files"].items()],
                "prompter": "prompter.json", "tools": tool_versions()}
    parity = report["parity"]
    atomic_write_json(out / "parity.json", {"files": {"prompter": parity}})
    atomic_write_json(out / "manifest.json", manifest)
    if parity["class_agreement"] < 1.0 or parity.get("mask_iou_min", 1.0) < DEFAULT_TOLERANCE.mask_iou:
        raise DistillError(f"prompter ONNX files disagree with PyTorch (class agreement {parity['class_agreement']:.3f}, "
                           f"min mask IoU {parity.get('mask_iou_min', float('nan')):.3f}); see {out / 'parity.json'}")
    return manifest


ULTRALYTICS_FORMATS = {"onnx": "onnx", "coreml": "coreml", "engine": "engine"}


def export_ultralytics(model_path: Path, formats: list[str], out: Path, options: ExportOptions, log=print) -> dict:
    """YOLO-seg students go through ultralytics' own exporters; ONNX parity is checked on the raw outputs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from sam_distill.methods.fastsam.recipe import export_yolo, offline

    offline()
    from ultralytics import YOLO

    yolo = YOLO(str(model_path))
    imgsz = int(yolo.model.args.get("imgsz", 640)) if isinstance(yolo.model.args, dict) else 640
    log(f"exporting ultralytics {yolo.task} model at {imgsz} px ...")
    written = export_yolo(model_path, [ULTRALYTICS_FORMATS[f] for f in formats], out, imgsz)
    parity = {"tolerance": {"output_max_abs": options.tolerance.embedding_max_abs}, "files": {}}
    if "onnx" in written:
        image = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            reference = yolo.model.float().eval()(image)
        session = ort.InferenceSession(written["onnx"], providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        tensors = _flatten(reference)  # the eval forward also returns training-only maps: match outputs by shape
        diffs = []
        for output in outputs:
            same_shape = [t for t in tensors if tuple(t.shape) == output.shape]
            if same_shape:
                diffs.append(float(np.abs(output - same_shape[0].numpy()).max()))
        parity["files"][Path(written["onnx"]).name] = {"role": "yolo-seg", "precision": "fp32",
                                                       "output_max_abs": max(diffs) if diffs else None}
        worst = max(diffs) if diffs else float("inf")
        if worst > options.tolerance.embedding_max_abs * 10:
            atomic_write_json(out / "parity.json", parity)
            raise DistillError(f"{written['onnx']}: ONNX outputs differ from PyTorch by {worst:.3g} "
                               f"(see {out / 'parity.json'})")
    manifest = {"source": {"path": str(model_path), "sha256": sha256_file(model_path), "model": f"ultralytics {yolo.task}",
                           "image_size": imgsz},
                "preprocessing": {"resize": "letterbox", "image_size": imgsz, "scale": "pixels / 255, RGB"},
                "files": [{"file": Path(path).name, "format": fmt, "role": "yolo-seg", "precision": "fp32"}
                          for fmt, path in written.items()],
                "tools": tool_versions()}
    atomic_write_json(out / "parity.json", parity)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _flatten(value) -> list:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _flatten(item)]
    return [value] if hasattr(value, "shape") else []


def parity_table(parity: dict) -> str:
    """One line per file: what the export costs against PyTorch."""
    lines = [f"{'file':<28} {'emb max abs':>12} {'emb mean abs':>12} {'point IoU':>10} {'box IoU':>9}"]
    for name, figures in parity["files"].items():
        if "skipped" in figures:
            lines.append(f"{name:<28} {figures['skipped']}")
            continue
        if "class_agreement" in figures or "output_max_abs" not in figures and "point_mask_iou" not in figures:
            lines.append(f"{name:<28} " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float)))
            continue
        if "output_max_abs" in figures:
            lines.append(f"{name:<28} raw outputs max abs {figures['output_max_abs']:.3g}")
            continue
        embedding = [format(figures[k], ".3g") if k in figures else "-" for k in ("embedding_max_abs", "embedding_mean_abs")]
        lines.append(f"{name:<28} {embedding[0]:>12} {embedding[1]:>12} "
                     f"{figures['point_mask_iou']:>10.4f} {figures['box_mask_iou']:>9.4f}")
    return "\n".join(lines)

