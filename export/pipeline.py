"""``distill export``: the model file's kind (from the model-file table) names the exporter of each format and the
options it applies; each exporter writes its files and checks their parity against PyTorch; this module refuses
what cannot apply before any work, then writes manifest.json and parity.json."""
from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_json, sha256_file
from sam_distill.export.parity import verdict_failures
from sam_distill.export.quantize import check_calibration
from sam_distill.export.registry import ExportOptions, ExportSource

TOOLS = ("torch", "onnx", "onnxruntime", "coremltools", "litert-torch", "ai-edge-litert", "ai-edge-quantizer",
         "executorch", "tensorrt", "segment-anything", "ultralytics", "sam-distill")
# ExportOptions fields a user turns on, which each kind's exporters declare they apply (core.model_files.Exporter)
SWITCHES = ("int8", "fp16", "static_shapes", "calibration")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for tool in TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "not installed"
    return versions


def _check_options(source: ExportSource, formats: list[str], options: ExportOptions) -> list[str]:
    """One line (raised) for an option nothing applies; lines naming the formats an applied option skips."""
    if options.int8_ops is not None and not options.int8:
        raise DistillError(f"--int8-ops {options.int8_ops} chooses what --int8 quantises; add --int8 or drop it")
    if options.calibration is not None and not options.int8:
        raise DistillError("--calibration is for static INT8 files; add --int8 or drop --calibration")
    asked = [name for name in SWITCHES if getattr(options, name) not in (False, None)]
    not_applied = source.kind.options_not_applied(formats, asked)
    if options.int8 and options.calibration is not None:
        check_calibration(options.calibration)
    return not_applied


def export_model(model_path: Path, formats: list[str], out: Path, options: ExportOptions, log=print) -> dict:
    """Export ``model_path`` in every format into ``out``; returns the manifest. fp32 parity failures raise, after
    manifest.json and parity.json are written."""
    source = ExportSource.of(model_path, options.image_size)  # one line for a file that is not a model
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        source.kind.exporter(fmt)  # one line for a format this kind has no exporter for, before any work
    not_applied = _check_options(source, formats, options)
    if options.image_size is not None:
        source.load()  # one line for a model that cannot run at that size, before any file is written
    for line in not_applied:
        log(line)
    out = Path(out)
    results = []
    for fmt in formats:
        log(f"exporting {source.kind.what} to {fmt} ...")
        results.append(source.kind.function("export", fmt)(source, options, out, log))
    files = [file for result in results for file in result.files]
    manifest = {"source": {"path": str(model_path), "sha256": sha256_file(model_path), "kind": source.kind.name}}
    parity = {"tolerance": vars(options.tolerance), "files": {}}
    for result in results:
        for section, content in result.manifest.items():
            if section == "source":
                manifest["source"].update(content)
            else:
                manifest[section] = content
        parity.update(result.parity)
        parity["files"].update(result.parity_files)
    for file in files:
        if file.parity is not None:
            parity["files"][str(Path(file.path).relative_to(out))] = {"role": file.role, "precision": file.precision,
                                                                      **file.parity}
    manifest["files"] = [file.manifest_entry(out) for file in files]
    manifest["options"] = {"formats": formats, "int8": options.int8, "int8_ops": options.int8_ops, "fp16": options.fp16,
                           "opset": options.opset, "static_shapes": options.static_shapes,
                           "image_size": options.image_size,
                           "calibration": str(options.calibration) if options.calibration else None,
                           "not_applied": not_applied}
    manifest["tools"] = tool_versions()
    atomic_write_json(out / "parity.json", parity)
    atomic_write_json(out / "manifest.json", manifest)
    failing = verdict_failures(parity["files"])
    if failing:
        log(f"{len(failing)} reduced-precision file(s) lose more than {options.tolerance.max_mask_iou_loss:g} mask IoU "
            f"against fp32 and are marked \"verdict\": \"fail\" in parity.json and manifest.json; do not ship them: "
            + ", ".join(failing))
    failure = next((result.failure for result in results if result.failure), None)
    if failure:
        raise DistillError(failure)
    return manifest


def parity_table(parity: dict) -> str:
    """One line per file (or per chain of graphs checked together): what the export costs against PyTorch."""
    lines = [f"{'file':<32} {'emb max abs':>12} {'emb mean abs':>12} {'point IoU':>10} {'box IoU':>9}  verdict"]
    for name, figures in parity["files"].items():
        if "skipped" in figures:
            lines.append(f"{name:<32} {figures['skipped']}")
            continue
        if "class_agreement" in figures or "output_max_abs" not in figures and "point_mask_iou" not in figures:
            lines.append(f"{name:<32} " + ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if isinstance(v, float)))
            continue
        if "output_max_abs" in figures:
            lines.append(f"{name:<32} raw outputs max abs {figures['output_max_abs']:.3g}")
            continue
        embedding = [format(figures[k], ".3g") if k in figures else "-" for k in ("embedding_max_abs", "embedding_mean_abs")]
        verdict = figures.get("verdict", "fp32 " + ("ok" if figures.get("within_tolerance") else "FAILED"))
        lines.append(f"{name:<32} {embedding[0]:>12} {embedding[1]:>12} "
                     f"{figures['point_mask_iou']:>10.4f} {figures['box_mask_iou']:>9.4f}  {verdict}")
    return "\n".join(lines)
