"""INT8 with onnxruntime.quantization: dynamic (weights only, per file) and static QDQ calibrated on real images.

Which is faster depends on the model and the CPU (here, dynamic INT8 of every operator made TinyViT 3× slower than
fp32 while MatMul-only was faster), so both are written and the benchmark reports each.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from segment_anything.modeling import Sam
from tqdm import tqdm

from sam_distill.core.errors import DistillError
from sam_distill.core.images import UnreadableImage, find_images, load_rgb
from sam_distill.export.registry import ExportOptions
from sam_distill.export.runtime import SamOnnxPredictor, preprocess

INT8_OPS = {"matmul": ["MatMul"], "all": None}
# Static QDQ quantises only the heavy operators: quantising everything also quantised the decoder's
# orig_im_size arithmetic, whose calibrated range (one image size) then fixed every output size.
STATIC_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]


QUANTISED_OPS = ("DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv",
                 "QLinearMatMul")


def coordinate_projections(path: Path) -> list[str]:
    """The MatMul/Gemm nodes that multiply 2-D coordinates by a 2 × N matrix: the random Fourier features of SAM's
    (and SAM 2's) prompt encoder, for the prompt points and for the image's positional encoding. They stay in
    float when the rest is quantised. In INT8 those features are wrong for every prompt and every image token: on
    the NWPU chain's student the INT8 decoder kept a one-click mask IoU of 0.51 against its fp32 self, and 0.95
    with these two nodes left in float (benchmarks/int8_decoder_nodes.py; ground-truth one-click mIoU 0.269
    against fp32's 0.467 before, 0.4635 after: docs/CHAIN.md, stage e). They are a few hundred weights, so keeping
    them costs nothing in size or time."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    two_rows = {init.name for init in graph.initializer if len(init.dims) == 2 and init.dims[0] == 2}
    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(name in two_rows for name in node.input)]


def quantize_dynamic_file(source: Path, target: Path, ops: str) -> Path:
    """Dynamic INT8 (weights INT8 per output channel, activations quantised per call) of ``ops``, coordinate
    projections excepted (``coordinate_projections``); a graph in which those operators do not occur is refused
    rather than written as an "INT8" copy of the fp32 file. Per-channel: TinyViT-5M's encoder ran 1.46× faster than
    fp32 against 1.42× per-tensor, at the same mask IoU (benchmarks/int8_recipes.py)."""
    import onnx

    if ops not in INT8_OPS:
        raise DistillError(f"--int8-ops {ops!r} is not known; choose one of: {', '.join(INT8_OPS)}")
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS[ops],
                     per_channel=True, nodes_to_exclude=coordinate_projections(source))
    if not any(node.op_type in QUANTISED_OPS for node in onnx.load(str(target), load_external_data=False).graph.node):
        target.unlink()
        kinds = " or ".join(INT8_OPS[ops] or ["quantisable"])
        raise DistillError(f"--int8-ops {ops} quantises nothing in {source.name} (it has no {kinds} operators); "
                           f"use --int8-ops all")
    return target


def check_calibration(source: Path) -> None:
    """Fail before any export work when the calibration source holds nothing to calibrate on."""
    if not (Path(source) / "cache.json").is_file():
        find_images(source)


def calibration_images(source: Path, count: int) -> list[np.ndarray]:
    """Up to ``count`` RGB images from an image folder or from a teacher cache's source images."""
    source = Path(source)
    if (source / "cache.json").is_file():
        from sam_distill.data.cache import EmbeddingCache

        paths = [Path(entry["source"]) for entry in EmbeddingCache(source).entries]
    else:
        paths = find_images(source)
    images = []
    for path in paths:
        if len(images) == count:
            break
        try:
            images.append(load_rgb(path))
        except (UnreadableImage, FileNotFoundError):
            continue
    if not images:
        raise DistillError(f"--calibration {source} gave no readable images; give an image folder or a teacher cache")
    return images


class FeedReader(CalibrationDataReader):
    """Hands onnxruntime's calibrator one prepared feed at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def quantize_static_files(sam: Sam, encoder: Path, decoder: Path, out: Path, options: ExportOptions) -> dict[str, Path]:
    """Static QDQ INT8 for both files: encoder calibrated on preprocessed images, decoder on their fp32 embeddings
    with point and box prompts."""
    from sam_distill.export.parity import sample_prompts

    images = calibration_images(options.calibration, options.calibration_count)
    size = int(sam.image_encoder.img_size)
    predictor = SamOnnxPredictor(encoder, decoder)
    encoder_feeds, decoder_feeds = [], []
    for index, image in enumerate(tqdm(images, desc="calibration feeds", leave=False)):
        encoder_feeds.append({"image": preprocess(image, size)})
        predictor.set_image(image)
        for prompt in sample_prompts(image.shape[:2], 1, seed=index):
            decoder_feeds.append(predictor.decoder_inputs(**prompt))
    written = {}
    for role, source, feeds in (("encoder", encoder, encoder_feeds), ("decoder", decoder, decoder_feeds)):
        target = out / f"{role}.int8-static.onnx"
        quantize_static(str(source), str(target), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        op_types_to_quantize=STATIC_OPS, nodes_to_exclude=coordinate_projections(source))
        written[role] = target
    return written

