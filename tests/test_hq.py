"""HQ-SAM teachers and their students, checked against the segment-anything-hq package: the teacher's features and
masks are those of its ``SamPredictor``; a distilled student is a segment-anything-hq ``Sam`` that the package's
predictor runs unchanged. A random-initialised HQ-SAM with a 4-block ViT (``hq_vit_nano``) at 256 px."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything_hq")

from sam_distill.core.errors import DistillError  # noqa: E402
from sam_distill.core.model_files import identify  # noqa: E402
from sam_distill.sam import hq_models  # noqa: E402
from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir  # noqa: E402
from sam_distill.sam.teachers import HqTeacher, load_teacher  # noqa: E402

NANO = "hq_vit_nano"
SIZE = 256


@pytest.fixture(scope="module")
def nano_teacher() -> HqTeacher:
    return load_teacher(NANO, random_init=True, image_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    picture = (np.random.default_rng(0).random((150, 200, 3)) * 60).astype(np.uint8)
    picture[40:100, 60:130] = (40, 200, 40)
    return picture


def test_teacher_features_and_masks_are_hq_predictors(nano_teacher, image):
    from segment_anything_hq import SamPredictor

    pixels = nano_teacher.preprocessing(image)[None]
    features = nano_teacher.embed_outputs(pixels)
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == nano_teacher.outputs == {
        "image_embed": (256, 16, 16), "interm_embed_0": (192, 16, 16)}
    predictor = SamPredictor(nano_teacher.model)
    predictor.set_image(image)
    assert torch.allclose(features["image_embed"], predictor.features, atol=1e-5)
    assert torch.allclose(features["interm_embed_0"], predictor.interm_features[0].permute(0, 3, 1, 2), atol=1e-5)
    point, box = np.array([[95.0, 70.0]]), np.array([55.0, 35.0, 135.0, 105.0])
    _, iou, low_res = predictor.predict(point_coords=point, point_labels=np.array([1]), box=box,
                                        multimask_output=False)
    scale = SIZE / 200
    with torch.inference_mode():
        ours, ours_iou = nano_teacher.decode(features, points=(torch.tensor(point[None] * scale, dtype=torch.float32),
                                                               torch.ones(1, 1)),
                                             boxes=torch.tensor(box[None] * scale, dtype=torch.float32))
    assert np.abs(ours.numpy() - low_res).max() < 1e-4 and np.allclose(ours_iou.numpy(), iou, atol=1e-5)


def test_official_hq_names_and_files_are_told_from_sam(nano_teacher, tmp_path):
    spec = TEACHERS.get("sam_hq_vit_l")
    assert spec.url == "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_l.pth"
    assert spec.arch == "hq_vit_l" and len(spec.md5) == 32
    with pytest.raises(DistillError) as err:  # offline (conftest): one sentence with the URL and the place
        load_teacher("sam_hq_vit_b")
    assert str(checkpoint_cache_dir() / "sam_hq_vit_b.pth") in str(err.value)
    path = tmp_path / "sam_hq_nano.pth"
    torch.save(nano_teacher.model.state_dict(), path)  # the official layout: a bare state dict
    assert identify(path).name == "hq"  # not "sam", whose prefixes it shares
    teacher = load_teacher("my_hq", path)
    assert isinstance(teacher, HqTeacher) and teacher.arch == NANO and teacher.image_size == SIZE


def test_light_hq_sam_file_is_a_teacher_that_predicts_as_the_packages_vit_t(tmp_path, image):
    """Light HQ-SAM (TinyViT encoder, 160-d early feature) in its official layout, a bare state dict as
    ``sam_hq_vit_tiny.pth`` is: taken as a teacher, it gives the features and masks that segment-anything-hq's own
    ``build_sam_vit_t`` model gives in its ``SamPredictor``."""
    from segment_anything_hq import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    reference = sam_model_registry["vit_tiny"]()  # the package's builder, no checkpoint: random weights
    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(reference.state_dict(), path)
    teacher = load_teacher("light_hq", path)
    assert isinstance(teacher, HqTeacher) and teacher.arch == hq_models.LIGHT_HQ and teacher.image_size == 1024
    assert teacher.outputs["interm_embed_0"] == (160, 64, 64)
    features = teacher.embed_outputs(teacher.preprocessing(image)[None])
    predictor = SamPredictor(reference.eval())
    predictor.set_image(image)
    assert torch.allclose(features["image_embed"], predictor.features, atol=1e-4)
    box = np.array([55.0, 35.0, 135.0, 105.0])
    _, _, low_res = predictor.predict(box=box, multimask_output=False)
    with torch.inference_mode():
        ours, _ = teacher.decode(features, boxes=torch.tensor(box[None] * 1024 / 200, dtype=torch.float32))
    assert np.abs(ours.numpy() - low_res).max() < 1e-3
    with pytest.raises(DistillError, match="1024-px inputs only"):
        hq_models.build_hq_model(hq_models.LIGHT_HQ, 512)


def test_distilled_hq_student_predicts_in_segment_anything_hq(run_quickstart_small, image):
    from segment_anything_hq import SamPredictor
    from segment_anything_hq.modeling import Sam

    from sam_distill.data.cache import EmbeddingCache

    run = run_quickstart_small("configs/hq_quickstart.yaml", {"synthetic": {"count": 3, "size": 160},
                                                               "holdout_fraction": 0.34}, teacher={"image_size": SIZE})
    cache = EmbeddingCache(run / "cache")
    assert cache.outputs == ("image_embed", "interm_embed_0")
    assert tuple(cache.targets(0)["interm_embed_0"].shape) == (192, 16, 16)
    header = (run / "checkpoints" / "distill" / "metrics.csv").read_text().splitlines()[0]
    assert "mse_image_embed" in header and "mse_interm_embed_0" in header
    assert (run / "checkpoints" / "prompt" / "last.pt").exists()  # EdgeSAM's stage through the HQ decoder
    assert json.loads((run / "reports" / "fidelity.json").read_text())["images"] == 1
    model_file = run / "model" / "model.pt"
    assert identify(model_file).name == "hq"
    model, student = hq_models.load_hq_file(model_file)
    assert isinstance(model, Sam) and student == "tinyvit_5m"
    predictor = SamPredictor(model)  # the package's predictor, unchanged
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=np.array([[95.0, 70.0]]), point_labels=np.array([1]))
    # HQ-SAM answers a multimask request with its best mask only (SAM's best plus the HQ mask)
    assert masks.shape == (1, 150, 200) and masks.dtype == bool and np.isfinite(scores).all()
    # The HQ decoder is the teacher's, copied: same weights.
    teacher = hq_models.load_hq_file(next((run / "teacher").glob("*.pth")))[0]
    for key, value in teacher.mask_decoder.state_dict().items():
        assert torch.equal(value, model.mask_decoder.state_dict()[key]), key


def test_hq_onnx_pair_has_segment_anything_hq_interface_and_parity(nano_teacher, tmp_path, image):
    """The decoder is segment-anything-hq's SamOnnxModel with its export script's inputs; its script feeds four
    early features (N=4) and the decoder reads the first, which our N=1 encoder output matches."""
    import onnxruntime as ort
    from PIL import Image

    from sam_distill.cli import main
    from sam_distill.export.runtime import HqOnnxPredictor

    model_file = tmp_path / "hq.pth"
    torch.save(nano_teacher.model.state_dict(), model_file)
    Image.fromarray(image).save(tmp_path / "parity.png")
    out = tmp_path / "onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(out),
                 "--parity-images", str(tmp_path), "--parity-count", "1"]) == 0
    parity = json.loads((out / "parity.json").read_text())["files"]
    assert parity["encoder.onnx"]["within_tolerance"] and parity["encoder.onnx"]["embedding_max_abs"] < 1e-4
    assert parity["decoder.onnx"]["point_mask_iou"] > 0.99 and parity["decoder.onnx"]["box_mask_iou"] > 0.99
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == ["image_embeddings", "interm_embeddings", "point_coords",
                                                      "point_labels", "mask_input", "has_mask_input", "orig_im_size"]
    predictor = HqOnnxPredictor(out / "encoder.onnx", out / "decoder.onnx")
    predictor.set_image(image)
    feed = predictor.decoder_inputs(point_coords=np.array([[95.0, 70.0]]), point_labels=np.array([1]))
    one = decoder.run(None, feed)[0]
    four = decoder.run(None, {**feed, "interm_embeddings": np.repeat(feed["interm_embeddings"], 4, axis=0)})[0]
    assert one.shape == (1, 1, 150, 200) and np.array_equal(one, four)


def test_predict_on_an_hq_file_is_its_predictors_mask(nano_teacher, tmp_path, image):
    from PIL import Image
    from pycocotools import mask as mask_utils
    from segment_anything_hq import SamPredictor

    from sam_distill.cli import main

    model_file = tmp_path / "hq.pth"
    torch.save(nano_teacher.model.state_dict(), model_file)
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    assert main(["predict", str(model_file), str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                 "--box", "55", "35", "135", "105"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    predictor = SamPredictor(nano_teacher.model)
    predictor.set_image(image)
    expected = predictor.predict(box=np.array([55.0, 35.0, 135.0, 105.0]), multimask_output=False)[0][0]
    assert expected.sum() > 1000  # this seed's mask is not empty, so the comparison below says something
    assert len(results) == 1
    assert np.array_equal(mask_utils.decode(results[0]["segmentation"]).astype(bool), expected)


def test_an_hq_file_answers_a_box_on_a_geotiff_scene(nano_teacher, tmp_path):
    """The scene path takes HQ-SAM files as SAM files: the box (scene pixels) runs on the tile around it and the
    polygon comes back in the raster's CRS, inside the box's footprint."""
    pytest.importorskip("rasterio")
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin

    from sam_distill.cli import main

    pixels = (np.random.default_rng(1).random((3, 700, 900)) * 60).astype(np.uint8)
    pixels[:, 400:460, 500:580] = 220
    scene = tmp_path / "scene.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=900, height=700, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500_000, 4_100_000, 0.5, 0.5)) as dst:
        dst.write(pixels)
    model_file = tmp_path / "hq.pth"
    torch.save(nano_teacher.model.state_dict(), model_file)
    assert main(["predict", str(model_file), str(scene), "--out", str(tmp_path / "out"), "--tile", "256",
                 "--box", "495", "395", "585", "465"]) == 0
    frame = gpd.read_file(tmp_path / "out" / "scene.geojson")
    assert len(frame) == 1 and frame.crs.to_epsg() == 32633
    minx, miny, maxx, maxy = frame.total_bounds  # the 256-px window around the box, in metres
    assert 500_000 + 0.5 * 367 <= minx and maxx <= 500_000 + 0.5 * 713
    assert 4_100_000 - 0.5 * 558 <= miny and maxy <= 4_100_000 - 0.5 * 302


def test_single_commands_embed_train_assemble_an_hq_student(image_folder, tmp_path, capsys):
    """`distill embed` → `distill train` → `distill assemble` for an HQ-SAM teacher: train names the teacher that
    made the cache (refused without it, or with another), weighs its outputs, and assemble writes an HQ-SAM."""
    from sam_distill.cli import main

    teacher_args = ["--teacher", NANO, "--random-init"]
    assert main(["embed", str(image_folder), "--out", str(tmp_path / "cache"), *teacher_args,
                 "--image-size", str(SIZE)]) == 0
    train = ["train", str(tmp_path / "cache"), "--student", "timm_test_vit", "--out", str(tmp_path / "state"),
             "--max-steps", "2", "--batch-size", "2", "--workers", "0", "--warmup-steps", "0"]
    assert main(train) == 2
    assert "holds the outputs of hq_vit_nano (image_embed, interm_embed_0)" in capsys.readouterr().err
    assert main([*train, "--teacher", "hq_vit_b", "--random-init"]) == 2
    assert "is not the teacher that made cache" in capsys.readouterr().err
    assert main([*train, *teacher_args, "--output-weight", "interm_embed_0=0.5"]) == 0
    metrics = (tmp_path / "state" / "metrics.csv").read_text().splitlines()[0]
    assert "interm_embed_0" in metrics and "image_embed" in metrics
    assert main(["assemble", str(tmp_path / "state"), "--student", "timm_test_vit", "--out", str(tmp_path / "model"),
                 *teacher_args, "--image-size", str(SIZE)]) == 0
    model, student = hq_models.load_hq_file(tmp_path / "model" / "model.pt")
    assert student == "timm_test_vit" and isinstance(model.image_encoder, hq_models.HqStudentEncoder)
