"""TensorRT engines for Jetson: built from the static-shape ONNX pair with the tensorrt package when it is
installed, otherwise the ``trtexec`` commands to run on the board are printed and recorded in the manifest."""
from __future__ import annotations

from pathlib import Path

from sam_distill.core.fileio import atomic_write_bytes
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource


def trtexec_commands(folder: Path) -> list[str]:
    return [f"trtexec --onnx={folder / name}.onnx --fp16 --saveEngine={folder / name}.fp16.engine"
            for name in ("encoder", "decoder.static")]


def network_flags(trt) -> int:
    """TensorRT 8.x parses ONNX only into an explicit-batch network (``create_network(0)`` gives an implicit-batch
    one the parser rejects); 10.x dropped implicit batch, and with it the flag, so there 0 is right."""
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is None or int(trt.__version__.split(".")[0]) >= 10:
        return 0
    return 1 << int(explicit)


def build_engine(onnx_path: Path, engine_path: Path) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    atomic_write_bytes(engine_path, bytes(builder.build_serialized_network(network, config)))
    return engine_path


def export_engine(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """fp16 engines from the static-shape ONNX pair (written here unless an onnx export in the same folder did)."""
    from sam_distill.export.onnx_export import ENCODER_NOTE, export_encoder, export_static, onnx_file, sam_manifest

    sam, info = source.load()
    out.mkdir(parents=True, exist_ok=True)
    encoder = out / "encoder.onnx"
    files = [] if encoder.exists() else [onnx_file(export_encoder(sam, encoder, options.opset), "encoder", "fp32", ENCODER_NOTE)]
    files += [] if (out / "decoder.static.onnx").exists() else export_static(sam, out, options)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        log("TensorRT is not installed here, so no engine was built; on the Jetson run:\n  "
            + "\n  ".join(trtexec_commands(out)))
        return Exported(files, manifest=sam_manifest(sam, info, out))
    for name in ("encoder", "decoder.static"):
        engine = build_engine(out / f"{name}.onnx", out / f"{name}.fp16.engine")
        files.append(ExportedFile(engine, "engine", "decoder" if "decoder" in name else "encoder", "fp16", [], [],
                                  "TensorRT fp16 engine for this GPU and TensorRT version only"))
    return Exported(files, manifest=sam_manifest(sam, info, out))
