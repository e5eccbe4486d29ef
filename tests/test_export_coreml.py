"""CoreML: ML Program packages for encoder and decoder convert on Linux with the documented inputs and outputs;
numerical prediction needs macOS."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from sam_distill.export.coreml import NOT_CHECKED, convert, describe_mlpackage, export_coreml  # noqa: E402
from sam_distill.export.registry import ExportOptions, ExportSource  # noqa: E402


@pytest.fixture(scope="module")
def packages(tiny_teacher_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml")
    exported = export_coreml(ExportSource.of(tiny_teacher_checkpoint), ExportOptions(), out)
    return {(f.role, f.precision): f for f in exported.files}


def test_encoder_and_decoder_specs(packages):
    assert set(packages) == {("encoder", "fp32"), ("decoder", "fp32")}  # fp16 only with --fp16
    encoder, decoder, dtype = packages["encoder", "fp32"], packages["decoder", "fp32"], "float32"
    assert encoder.path.name == "encoder.mlpackage" and decoder.path.name == "decoder.mlpackage"
    assert encoder.path.is_dir() and (encoder.path / "Manifest.json").is_file()
    assert describe_mlpackage(encoder.path) == (encoder.inputs, encoder.outputs)
    assert encoder.inputs == [{"name": "image", "shape": [1, 3, 256, 256], "dtype": dtype}]
    assert encoder.outputs == [{"name": "image_embeddings", "shape": [1, 256, 16, 16], "dtype": dtype}]
    assert [(i["name"], i["shape"]) for i in decoder.inputs] == [
        ("image_embeddings", [1, 256, 16, 16]), ("point_coords", [1, "1..16", 2]),
        ("point_labels", [1, "1..16"]),
        ("mask_input", [1, 1, 64, 64]), ("has_mask_input", [1])]
    assert [(o["name"], o["shape"]) for o in decoder.outputs] == [("iou_predictions", [1, 4]), ("low_res_masks", [1, 4, 64, 64])]
    if sys.platform != "darwin":
        assert encoder.parity == {"skipped": NOT_CHECKED} and NOT_CHECKED.startswith("not checked (needs macOS)")


def test_tinyvit_fp16_converts_with_the_int_cast_fix(tmp_path):
    """TinyViT's shape arithmetic hits coremltools 9.0's ``int`` conversion of a length-1 constant; fp16 package."""
    from sam_distill.students import create_student

    encoder = create_student("tinyvit_5m", image_size=256).eval()
    path = convert(encoder, {"image": torch.zeros(1, 3, 256, 256)}, ["image_embeddings"], "fp16", tmp_path / "tinyvit.mlpackage")
    inputs, outputs = describe_mlpackage(path)
    assert inputs == [{"name": "image", "shape": [1, 3, 256, 256], "dtype": "float16"}]
    assert outputs == [{"name": "image_embeddings", "shape": [1, 256, 16, 16], "dtype": "float16"}]


@pytest.mark.skipif(sys.platform != "darwin", reason="CoreML prediction runs only on macOS")
def test_prediction_matches_pytorch(packages, tiny_teacher):
    import coremltools as ct

    image = torch.randn(1, 3, 256, 256)
    expected = tiny_teacher.model.image_encoder(image).detach().numpy()
    got = ct.models.MLModel(str(packages["encoder", "fp32"].path)).predict({"image": image.numpy()})["image_embeddings"]
    assert np.abs(got - expected).max() < 1e-2
