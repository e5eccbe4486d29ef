"""SAM → ExecuTorch (``.pte``, PyTorch's on-device runtime for Android/iOS) lowered to the XNNPACK backend, checked
in ExecuTorch's Python runtime on this machine.

The decoder keeps a symbolic point count (1 … ``MAX_POINTS``), so one file serves clicks and boxes alike. Its
graph is lowered to XNNPACK one operator at a time (``per_op_mode``): lowering it whole fails with "Invalid
partition, found dependency cycles", with a fixed point count too (operators XNNPACK does not take, such as the
views and expands of symbolic size and the layer norms, sit between delegated ones; replacing the label
comparisons with arithmetic did not help), and the portable kernels alone took ~2.8 s a call here against ~0.1 s
delegated. ``--int8`` adds XNNPACK's dynamic
INT8 of the linear layers (per-channel INT8 weights, activations quantised at run time) through PT2E: the linear
layers only, as ``--int8-ops matmul`` does for ONNX; with the convolutions too, lowering TinyViT fails in XNNPACK's
channels-last pass ("required rank 4 tensor to use channels_last format").
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_bytes
from sam_distill.export.low_res_decoder import INPUTS as DECODER_INPUTS
from sam_distill.export.low_res_decoder import NOTE as DECODER_NOTE
from sam_distill.export.low_res_decoder import OUTPUTS as DECODER_OUTPUTS
from sam_distill.export.low_res_decoder import LowResDecoder, describe_outputs, low_res_example
from sam_distill.export.registry import Exported, ExportedFile, ExportOptions, ExportSource
from sam_distill.export.runtime import LowResPredictor

INSTALL = "ExecuTorch export needs the executorch package: pip install \"sam-distill[executorch]\""
MAX_POINTS = 64


def require_executorch() -> None:
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        raise DistillError(INSTALL) from None


def quantize_dynamic_int8(module: nn.Module, example: tuple, dynamic_shapes) -> nn.Module:
    """XNNPACK's dynamic INT8 of ``nn.Linear`` layers through PT2E: per-channel symmetric INT8 weights,
    activations quantised per call."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)
    graph = torch.export.export(module, example, dynamic_shapes=dynamic_shapes).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example)
    return convert_pt2e(prepared)


def lower(module: nn.Module, example: tuple, path: Path, dynamic_shapes=None, per_op: bool = False,
          int8: bool = False) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        module = module.eval()
        if int8:
            module = quantize_dynamic_int8(module, example, dynamic_shapes)
        program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(per_op_mode=per_op)])
        atomic_write_bytes(path, lowered.to_executorch().buffer)
    return path


def decoder_dynamic_shapes() -> dict:
    points = torch.export.Dim("num_points", min=1, max=MAX_POINTS)
    return {"image_embeddings": None, "point_coords": {1: points}, "point_labels": {1: points}, "mask_input": None,
            "has_mask_input": None}


class ExecuTorchModel:
    """A ``.pte`` file's ``forward`` in ExecuTorch's Python runtime, called with and returning named arrays."""

    def __init__(self, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.inputs, self.outputs = inputs, outputs

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[name], np.float32)) for name in self.inputs]
        results = self.method.execute(tensors)
        return {name: value.numpy() for name, value in zip(self.outputs, results)}


class SamExecuTorchPredictor(LowResPredictor):
    """An ExecuTorch pair (``distill export --format pte``); the decoder takes 1 … ``MAX_POINTS`` points."""

    def __init__(self, encoder_path, decoder_path):
        encoder = ExecuTorchModel(encoder_path, ("image",), ("image_embeddings",))
        decoder = ExecuTorchModel(decoder_path, DECODER_INPUTS, DECODER_OUTPUTS)
        size = int(encoder.method.metadata.input_tensor_meta(0).sizes()[-1])
        super().__init__(encoder, decoder, size)


def export_pte(source: ExportSource, options: ExportOptions, out: Path, log=print) -> Exported:
    """``encoder.pte`` and ``decoder.pte`` (XNNPACK, fp32), ``.int8-dynamic`` copies with ``--int8``; every file run
    in ExecuTorch's runtime against PyTorch."""
    from sam_distill.export.onnx_export import ENCODER_NOTE
    from sam_distill.export.parity import checked_export

    require_executorch()
    sam, info = source.load()
    out.mkdir(parents=True, exist_ok=True)
    size = int(sam.image_encoder.img_size)
    image = (torch.zeros(1, 3, size, size),)
    decoder_example = tuple(low_res_example(sam, 2).values())
    decoder_note = f"1 to {MAX_POINTS} points; {DECODER_NOTE}"
    files = []
    for precision in ["fp32"] + (["int8-dynamic"] if options.int8 else []):
        suffix = "" if precision == "fp32" else f".{precision}"
        log(f"lowering the encoder and decoder to ExecuTorch/XNNPACK ({precision}) ...")
        int8 = precision != "fp32"
        encoder = lower(sam.image_encoder, image, out / f"encoder{suffix}.pte", int8=int8)
        decoder = lower(LowResDecoder(sam), decoder_example, out / f"decoder{suffix}.pte", decoder_dynamic_shapes(),
                        per_op=True, int8=int8)
        files.append(ExportedFile(encoder, "pte", "encoder", precision,
                                  [{"name": "image", "shape": [1, 3, size, size], "dtype": "float32"}],
                                  [{"name": "image_embeddings", "shape": [1, sam.prompt_encoder.embed_dim,
                                                                          *sam.prompt_encoder.image_embedding_size],
                                    "dtype": "float32"}], ENCODER_NOTE))
        example = dict(zip(DECODER_INPUTS, decoder_example))
        inputs = [{"name": n, "shape": ["num_points" if n.startswith("point") and i == 1 else d
                                        for i, d in enumerate(example[n].shape)], "dtype": "float32"}
                  for n in DECODER_INPUTS]
        files.append(ExportedFile(decoder, "pte", "decoder", precision, inputs, describe_outputs(size), decoder_note))
    return checked_export(sam, info, files, options, out, "ExecuTorch's runtime", log)
