"""ONNX export: SAM's official decoder interface, torch-free runtime parity with SamPredictor, INT8 and
static-shape variants, manifest/parity files and the fp32 tolerance failure."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from sam_distill.cli import main
from sam_distill.core.errors import DistillError
from sam_distill.core.images import find_images, load_rgb
from sam_distill.export.parity import fp32_failure
from sam_distill.export.pipeline import export_model
from sam_distill.export.registry import ExportedFile, ExportOptions, ExportSource, Tolerance
from sam_distill.export.tensorrt import export_engine

# segment-anything's scripts/export_onnx_model.py: every input and output is float32; these are the ranks.
SAM_DECODER_INPUTS = {"image_embeddings": 4, "point_coords": 3, "point_labels": 2, "mask_input": 4,
                      "has_mask_input": 1, "orig_im_size": 1}
SAM_DECODER_OUTPUTS = {"masks": 4, "iou_predictions": 2, "low_res_masks": 4}


@pytest.fixture(scope="module")
def exported(tiny_teacher_checkpoint, image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    options = ExportOptions(int8=True, fp16=True, static_shapes=True, calibration=image_folder, calibration_count=3,
                            parity_count=2)
    manifest = export_model(tiny_teacher_checkpoint, ["onnx"], out, options, log=lambda m: None)
    return out, manifest


def entry(manifest, name):
    return next(f for f in manifest["files"] if f["file"] == name)


def test_decoder_has_segment_anything_interface(exported):
    _, manifest = exported
    decoder = entry(manifest, "decoder.onnx")
    assert [i["name"] for i in decoder["inputs"]] == list(SAM_DECODER_INPUTS)
    assert [o["name"] for o in decoder["outputs"]] == list(SAM_DECODER_OUTPUTS)
    for value in decoder["inputs"] + decoder["outputs"]:
        assert value["dtype"] == "float32"
        assert len(value["shape"]) == {**SAM_DECODER_INPUTS, **SAM_DECODER_OUTPUTS}[value["name"]]
    coords = decoder["inputs"][1]["shape"]
    assert coords[0] == 1 and coords[1] == "num_points" and coords[2] == 2
    static = entry(manifest, "decoder.static.onnx")
    assert static["inputs"][1]["shape"] == [1, 2, 2]


def test_encoder_input_and_manifest(exported, tiny_teacher_checkpoint):
    out, manifest = exported
    encoder = entry(manifest, "encoder.onnx")
    assert encoder["inputs"] == [{"name": "image", "shape": [1, 3, 256, 256], "dtype": "float32"}]
    assert encoder["outputs"] == [{"name": "image_embeddings", "shape": [1, 256, 16, 16], "dtype": "float32"}]
    from sam_distill.core.fileio import sha256_file

    assert manifest["source"]["sha256"] == sha256_file(tiny_teacher_checkpoint)
    assert manifest["preprocessing"]["pixel_mean"] == [123.675, 116.28, 103.53]
    assert manifest["tools"]["onnxruntime"] != "not installed"
    assert "trtexec --onnx=" in manifest["tensorrt"]["commands"][0] and "--fp16" in manifest["tensorrt"]["commands"][0]
    names = {f["file"] for f in manifest["files"]}
    assert names == {"encoder.onnx", "decoder.onnx", "encoder.int8-dynamic.onnx", "decoder.int8-dynamic.onnx",
                     "encoder.int8-static.onnx", "decoder.int8-static.onnx", "decoder.static.onnx",
                     "encoder.fp16.onnx", "decoder.fp16.onnx"}
    assert all((out / name).is_file() for name in names)
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest))


def test_parity_report(exported):
    out, _ = exported
    parity = json.loads((out / "parity.json").read_text())
    fp32 = parity["files"]["encoder.onnx"]
    assert fp32["embedding_max_abs"] < 1e-3 and fp32["point_mask_iou"] >= 0.99 and fp32["box_mask_iou"] >= 0.99
    assert fp32["within_tolerance"]
    int8 = parity["files"]["encoder.int8-dynamic.onnx"]
    assert int8["embedding_max_abs"] > fp32["embedding_max_abs"]  # quantisation costs something, and it is reported
    assert 0.0 <= parity["files"]["decoder.int8-static.onnx"]["box_mask_iou"] <= 1.0
    assert "embedding_max_abs" not in parity["files"]["decoder.onnx"]  # decoders are paired with the fp32 encoder
    assert parity["files"]["decoder.static.onnx"]["point_mask_iou"] >= 0.99
    fp16 = parity["files"]["encoder.fp16.onnx"]
    assert fp32["embedding_max_abs"] < fp16["embedding_max_abs"] < 0.1 and fp16["point_mask_iou"] > 0.9
    # INT8 files are smaller than fp32 ones
    assert (out / "encoder.int8-dynamic.onnx").stat().st_size < 0.6 * (out / "encoder.onnx").stat().st_size


def test_int8_decoders_keep_the_prompt_encoders_coordinate_projections_in_float(exported):
    """The prompt encoder's random Fourier features (2-D coordinates times a 2 × 128 matrix, for the prompts and
    for the image's positional encoding) stay float in both INT8 decoders; everything else heavy is quantised.
    In INT8 they cost the NWPU chain's student most of its one-click mIoU (docs/CHAIN.md, stage e)."""
    import onnx

    from sam_distill.export.quantize import QUANTISED_OPS, coordinate_projections

    out, _ = exported
    projections = coordinate_projections(out / "decoder.onnx")
    assert len(projections) == 2  # the prompt points' and the dense image positional encoding's
    assert coordinate_projections(out / "encoder.onnx") == []
    for name in ("decoder.int8-dynamic.onnx", "decoder.int8-static.onnx"):
        graph = onnx.load(str(out / name)).graph
        float_matrices = {i.name for i in graph.initializer if list(i.dims)[:1] == [2] and i.data_type == 1}
        kept = {n.name: n for n in graph.node if n.name in projections}
        assert set(kept) == set(projections), name
        assert all(n.op_type == "MatMul" and float_matrices & set(n.input) for n in kept.values()), name
        assert any(n.op_type in QUANTISED_OPS for n in graph.node), name


def test_runtime_matches_sam_predictor(exported, tiny_teacher, image_folder):
    from sam_distill.export.runtime import SamOnnxPredictor

    out, _ = exported
    runtime = SamOnnxPredictor(out / "encoder.onnx", out / "decoder.onnx")
    predictor = SamPredictor(tiny_teacher.model)
    image = load_rgb(find_images(image_folder)[0])
    h, w = image.shape[:2]
    runtime.set_image(image)
    with torch.inference_mode():
        predictor.set_image(image)
    np.testing.assert_allclose(runtime.embeddings, predictor.features.numpy(), atol=1e-4)
    prompts = [dict(point_coords=np.array([[w * 0.3, h * 0.6]]), point_labels=np.array([1]), multimask_output=True),
               dict(point_coords=np.array([[w * 0.5, h * 0.5], [w * 0.1, h * 0.2]]), point_labels=np.array([1, 0]),
                    multimask_output=False),
               dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]), multimask_output=False),
               dict(point_coords=np.array([[w * 0.4, h * 0.4]]), point_labels=np.array([1]),
                    box=np.array([w * 0.2, h * 0.2, w * 0.6, h * 0.7]), multimask_output=False)]
    for prompt in prompts:
        with torch.inference_mode():
            torch_masks, torch_iou, torch_low = predictor.predict(**prompt)
        masks, iou, low = runtime.predict(**prompt)
        assert masks.shape == torch_masks.shape == (3 if prompt["multimask_output"] else 1, h, w)
        for ours, theirs in zip(masks, torch_masks):
            union = np.logical_or(ours, theirs).sum()
            assert union > 0 and np.logical_and(ours, theirs).sum() / union >= 0.99
        np.testing.assert_allclose(iou, torch_iou, atol=1e-3)
    # the last low-res mask as a prompt, as in SAM's iterative refinement
    with torch.inference_mode():
        again_torch = predictor.predict(**prompt, mask_input=torch_low[:1])[0]
    again = runtime.predict(**prompt, mask_input=low[:1])[0]
    assert np.logical_and(again, again_torch).sum() / np.logical_or(again, again_torch).sum() >= 0.99


def test_runtime_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sam_distill.export.runtime import SamOnnxPredictor\n"
            "print(SamOnnxPredictor.__name__, sys.modules['torch'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["SamOnnxPredictor", "None"]
    # and blocking torch really blocks it, so the check above can fail
    blocked = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import sam_distill.export.pipeline"],
                             capture_output=True, text=True, timeout=60)
    assert blocked.returncode != 0 and "torch" in blocked.stderr


def test_fp32_parity_failure_names_the_figure(exported):
    out, _ = exported
    figures = json.loads((out / "parity.json").read_text())["files"]
    files = [ExportedFile(out / name, "onnx", figures[name]["role"], figures[name]["precision"], [], [], parity=figures[name])
             for name in ("encoder.onnx", "decoder.onnx", "encoder.int8-dynamic.onnx")]
    assert fp32_failure(files, Tolerance(), out / "parity.json") is None  # the real figures pass the defaults
    message = fp32_failure(files, Tolerance(embedding_max_abs=1e-12, mask_iou=0.5), out / "parity.json")
    assert message.startswith("fp32 parity of encoder.onnx failed: embedding max abs diff ")
    assert "> 1e-12" in message and "mask IoU" not in message and "\n" not in message
    # INT8 is far outside such a tolerance but only reports its cost
    files[2].precision = "int8-dynamic"
    assert fp32_failure(files[1:], Tolerance(embedding_max_abs=1e-12), out / "parity.json") is None


@pytest.mark.parametrize("args, message", [
    (["--format", "savedmodel"], "cannot be exported to 'savedmodel'; choose one of: coreml, engine, onnx, ort, pte, tflite"),
    (["--format", "onnx", "--opset", "7"], "--opset 7 is not supported"),
])
def test_bad_options_are_one_line_errors(tiny_teacher_checkpoint, tmp_path, capsys, args, message):
    assert main(["export", str(tiny_teacher_checkpoint), "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_model_and_empty_calibration(tmp_path, tiny_teacher_checkpoint):
    with pytest.raises(DistillError, match="does not exist"):
        export_model(tmp_path / "nope.pt", ["onnx"], tmp_path / "out", ExportOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match="holds no images"):
        export_model(tiny_teacher_checkpoint, ["onnx"], tmp_path / "out",
                     ExportOptions(int8=True, calibration=tmp_path / "empty", parity_count=1), log=lambda m: None)


def test_engine_without_tensorrt_prints_trtexec(tiny_teacher_checkpoint, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test covers machines without it")
    except ImportError:
        pass
    files = export_engine(ExportSource.of(tiny_teacher_checkpoint), ExportOptions(), tmp_path).files
    printed = capsys.readouterr().out
    assert "TensorRT is not installed here" in printed
    assert f"trtexec --onnx={tmp_path}/encoder.onnx --fp16 --saveEngine={tmp_path}/encoder.fp16.engine" in printed
    assert [(f.path.name, f.precision) for f in files] == [("encoder.onnx", "fp32"), ("decoder.static.onnx", "fp32-static")]
    assert files[1].inputs[1]["shape"] == [1, 2, 2]


def test_a_convnet_sam_exports_at_another_input_size(convnet_sam_file, tiny_teacher_checkpoint, image_folder, tmp_path,
                                                     capsys):
    """`distill export --image-size N` ships a ConvNet SAM at the size it scores best at (docs/CHAIN.md): the graphs
    take N×N images and answer as the same weights run at N in PyTorch; a model that cannot run at N gets one line
    before any file is written."""
    from sam_distill.export.runtime import SamOnnxPredictor
    from sam_distill.sam.model_file import load_model

    out = tmp_path / "export"
    assert main(["export", str(convnet_sam_file), "--image-size", "192", "--out", str(out), "--parity-count", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["image_size"] == 192 and manifest["options"]["image_size"] == 192
    assert entry(manifest, "encoder.onnx")["inputs"][0]["shape"] == [1, 3, 192, 192]
    assert json.loads((out / "parity.json").read_text())["files"]["decoder.onnx"]["within_tolerance"]

    runtime = SamOnnxPredictor(out / "encoder.onnx", out / "decoder.onnx")
    predictor = SamPredictor(load_model(convnet_sam_file, image_size=192)[0])
    image = load_rgb(find_images(image_folder)[0])
    h, w = image.shape[:2]
    box = np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])
    runtime.set_image(image)
    with torch.inference_mode():
        predictor.set_image(image)
        torch_masks, torch_iou, torch_low = predictor.predict(box=box, multimask_output=False)
    assert runtime.embeddings.shape == (1, 256, 12, 12)
    np.testing.assert_allclose(runtime.embeddings, predictor.features.numpy(), atol=1e-4)
    masks, iou, low = runtime.predict(box=box, multimask_output=False)
    assert low.shape == torch_low.shape == (1, 48, 48)
    assert np.logical_and(masks, torch_masks).sum() / max(np.logical_or(masks, torch_masks).sum(), 1) >= 0.99
    np.testing.assert_allclose(iou, torch_iou, atol=1e-3)

    capsys.readouterr()
    assert main(["export", str(tiny_teacher_checkpoint), "--image-size", "192"]) == 2
    assert "runs at 256 px only" in capsys.readouterr().err
    assert not (tiny_teacher_checkpoint.parent / "vit_tiny-export-192px").exists()
