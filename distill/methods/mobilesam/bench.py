"""Bench entries of the mobilesam package's model kinds (the ``bench`` refs registered in its ``__init__``): SAM
files in PyTorch eager, and the SAM encoder/decoder ONNX graphs `distill export` writes, in onnxruntime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from sam_distill.core.errors import DistillError
from sam_distill.core.model_files import probe
from sam_distill.eval.bench import ROLE_STUDENT, ROLE_TEACHER, BenchModel, feature_bench_model, sam_bench_model
from sam_distill.export.quantize import QUANTISED_OPS
from sam_distill.sam.hq_models import MODEL_FORMAT as HQ_MODEL_FORMAT
from sam_distill.sam.hq_models import load_hq_file
from sam_distill.sam.model_file import MODEL_FORMAT, load_model
from sam_distill.sam.sam2_models import read_sam2_file, sam2_from_state


def bench_sam(path: Path, device: str = "cpu", threads: int = 1, image_size: int | None = None) -> BenchModel:
    """Our ``model.pt`` (a distilled student), MobileSAM's ``mobile_sam.pt`` (a student) or an official SAM
    checkpoint (a teacher); the file decides the image size unless ``image_size`` asks for another."""
    sam, info = load_model(path, image_size)
    if probe(path).tag == MODEL_FORMAT:
        return sam_bench_model(sam, f"{info.student} ({path.name})", "sam-distill", ROLE_STUDENT, path, device)
    if info.student == "tinyvit_5m":
        return sam_bench_model(sam, f"mobilesam ({path.name})", "mobilesam", ROLE_STUDENT, path, device)
    return sam_bench_model(sam, f"{info.student} ({path.name})", "sam", ROLE_TEACHER, path, device)


def bench_sam2(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    """A SAM 2 file: an official checkpoint is a teacher, ours a student; the size is SAM 2's own (1024)."""
    state_dict, ours = read_sam2_file(path)
    model, arch, _ = sam2_from_state(state_dict, ours, path)
    return feature_bench_model(model, "sam2", f"{arch} ({path.name})", "sam-distill-sam2" if ours else "sam2",
                               ROLE_STUDENT if ours else ROLE_TEACHER, path, device)


def bench_hq(path: Path, device: str = "cpu", threads: int = 1, image_size: int = 1024) -> BenchModel:
    """An HQ-SAM file: an official checkpoint is a teacher, ours a student."""
    model, arch = load_hq_file(path)
    ours = probe(path).tag == HQ_MODEL_FORMAT
    return feature_bench_model(model, "hq", f"{arch} ({path.name})", "sam-distill-hq" if ours else "hq-sam",
                               ROLE_STUDENT if ours else ROLE_TEACHER, path, device)


def _onnx_feeds(session, image_size: int) -> tuple[str, str, dict, int]:
    """Dummy inputs for a SAM encoder, a SamOnnxModel decoder or an ultralytics YOLO-seg graph: (the phase it is
    timed as, what it is, the feeds, the image side they stand for: the graph's own where its shapes are static).
    A YOLO-seg network is the whole automatic pipeline, so it is timed as the encoder phase, as its ``.pt`` is."""
    names = {i.name: i for i in session.get_inputs()}

    def dims(name, fallback):
        shape = names[name].shape
        return [d if isinstance(d, int) else f for d, f in zip(shape, fallback)] if len(shape) == len(fallback) else fallback

    if "image" in names:
        shape = dims("image", [1, 3, image_size, image_size])
        return "encoder", "encoder", {"image": np.random.rand(*shape).astype(np.float32)}, shape[-1]
    if set(names) == {"images"}:  # ultralytics' exported network (a FastSAM-style student's fastsam.onnx)
        shape = dims("images", [1, 3, image_size, image_size])
        return "encoder", "yolo-seg", {"images": np.random.rand(*shape).astype(np.float32)}, shape[-1]
    if "image_embeddings" in names:
        emb = dims("image_embeddings", [1, 256, image_size // 16, image_size // 16])
        side = emb[-1] * 16
        # One positive point plus SamOnnxModel's padding point (label -1), as SamPredictor sends it.
        feeds = {"image_embeddings": np.random.rand(*emb).astype(np.float32),
                 "point_coords": np.array([[[side / 2, side / 2], [0.0, 0.0]]], dtype=np.float32),
                 "point_labels": np.array([[1, -1]], dtype=np.float32),
                 "mask_input": np.zeros((1, 1, emb[-2] * 4, emb[-1] * 4), dtype=np.float32),
                 "has_mask_input": np.zeros(1, dtype=np.float32),
                 "orig_im_size": np.array([side, side], dtype=np.float32)}
        missing = set(names) - set(feeds)
        if missing:
            raise DistillError(f"decoder graph has inputs {sorted(missing)} beyond SamOnnxModel's; export it with SamOnnxModel")
        return "decoder", "decoder", {k: v for k, v in feeds.items() if k in names}, side
    raise DistillError(f"ONNX inputs {sorted(names)} are neither a SAM encoder ('image'), a SamOnnxModel decoder "
                       f"('image_embeddings') nor a YOLO-seg network ('images'); export with `distill export`")


def bench_onnx(path: Path, device: str = "cpu", threads: int = 1, image_size: int | None = None) -> BenchModel:
    """A SAM encoder (input ``image``), SamOnnxModel decoder (``image_embeddings``) or YOLO-seg (``images``) graph
    on onnxruntime's CPU provider; dynamic input sizes take ``image_size``. INT8 graphs are labelled ``onnx-int8``,
    graphs with fp16 weights ``onnx-fp16``."""
    if device != "cpu":
        raise DistillError(f"model {path}: ONNX models are timed on CPU only; drop --device {device}")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise DistillError(f"model {path} is not a readable ONNX file ({str(err).splitlines()[0][:120]})") from None
    params = sum(int(np.prod(t.dims)) for t in graph.graph.initializer)
    quantised = any(node.op_type in QUANTISED_OPS for node in graph.graph.node)
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    part, what, feeds, side = _onnx_feeds(session, image_size or 1024)

    def run():
        return session.run(None, feeds)

    precision = "int8" if quantised else "fp16" if half else "fp32"
    model = BenchModel(name=f"{path.stem} ({path.name})", kind=f"onnx-{what}", format=f"onnx-{precision}",
                       role=ROLE_STUDENT, path=path, params=params, image_size=int(side),
                       notes=[f"onnxruntime {ort.__version__} CPU, {threads} intra-op threads; GFLOPs not counted"])
    setattr(model, part, run)
    return model
