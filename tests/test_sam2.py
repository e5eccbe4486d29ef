"""SAM 2.1 teachers and their students, checked against the sam2 package itself: the teacher's features and masks
are those of sam2's ``SAM2ImagePredictor``; a distilled student loads through sam2's own config instantiation and
checkpoint loader, unchanged, and predicts what the toolkit's copy predicts. Random-initialised SAM 2.1 of a small
Hiera (``sam2.1_hiera_nano``) at sam2's fixed 1024 px."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from sam_distill.core.errors import DistillError  # noqa: E402
from sam_distill.sam import sam2_models  # noqa: E402
from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir, download  # noqa: E402
from sam_distill.sam.teachers import Sam2Teacher, load_teacher  # noqa: E402

NANO = "sam2.1_hiera_nano"


@pytest.fixture(scope="module")
def nano_teacher() -> Sam2Teacher:
    return load_teacher(NANO, random_init=True, seed=0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    picture = (rng.random((300, 400, 3)) * 60).astype(np.uint8)
    picture[80:200, 120:260] = (200, 40, 40)
    return picture


def test_teacher_features_and_masks_are_sam2_predictors(nano_teacher, image):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    features = nano_teacher.embed_outputs(nano_teacher.preprocessing(image)[None])
    assert {name: tuple(value.shape[1:]) for name, value in features.items()} == nano_teacher.outputs == {
        "image_embed": (256, 64, 64), "high_res_feats_0": (32, 256, 256), "high_res_feats_1": (64, 128, 128)}
    predictor = SAM2ImagePredictor(nano_teacher.model)
    with torch.inference_mode():
        predictor.set_image(image)
        reference = predictor._features
        for level, high_res in enumerate(reference["high_res_feats"]):
            assert torch.allclose(features[f"high_res_feats_{level}"], high_res, atol=1e-5)
        assert torch.allclose(features["image_embed"], reference["image_embed"], atol=1e-5)
        _, iou, low_res = predictor.predict(point_coords=np.array([[190.0, 140.0]]), point_labels=np.array([1]),
                                            box=np.array([110.0, 70.0, 270.0, 210.0]), multimask_output=False)
        scale = torch.tensor([1024 / 400, 1024 / 300])
        ours, ours_iou = nano_teacher.decode(features, points=(torch.tensor([[[190.0, 140.0]]]) * scale,
                                                               torch.tensor([[1]])),
                                             boxes=torch.tensor([[110.0, 70.0, 270.0, 210.0]]) * scale.repeat(2))
    assert np.abs(ours.numpy() - low_res).max() < 1e-4
    assert np.allclose(ours_iou.numpy(), iou, atol=1e-5)


def test_official_sam2_names_download_once_with_their_md5(tmp_path, monkeypatch):
    spec = TEACHERS.get("sam2.1_hiera_tiny")
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    assert spec.arch == "sam2.1_hiera_t" and len(spec.md5) == 32
    assert TEACHERS.get("sam2_hiera_large").url.endswith("/072824/sam2_hiera_large.pt")
    with pytest.raises(DistillError) as err:  # offline (conftest): one sentence with the URL and the place
        load_teacher("sam2.1_hiera_tiny")
    assert spec.url in str(err.value) and str(checkpoint_cache_dir() / "sam2.1_hiera_tiny.pt") in str(err.value)
    payload = b"a stand-in for a checkpoint"
    source = tmp_path / "remote.pt"
    source.write_bytes(payload)
    with pytest.raises(DistillError, match="md5"):
        download(source.as_uri(), tmp_path / "bad.pt", "", md5="0" * 32)
    download(source.as_uri(), tmp_path / "good.pt", "", md5=hashlib.md5(payload).hexdigest())
    assert (tmp_path / "good.pt").read_bytes() == payload


def test_official_layout_file_loads_and_bad_files_get_one_line(nano_teacher, tmp_path):
    path = tmp_path / "sam2.1_nano.pt"
    torch.save({"model": nano_teacher.model.state_dict()}, path)  # sam2's checkpoint layout
    teacher = load_teacher("my_sam2", path)  # recognised by its contents, whatever the name
    assert isinstance(teacher, Sam2Teacher) and teacher.arch == NANO
    assert all(torch.equal(a, b) for a, b in zip(teacher.model.state_dict().values(),
                                                 nano_teacher.model.state_dict().values()))
    with pytest.raises(DistillError, match="expects a sam2.1_hiera_t checkpoint"):
        load_teacher("sam2.1_hiera_tiny", path)
    # A config that names another callable than sam2's or our students' is refused before anything is built.
    hostile = tmp_path / "hostile.pt"
    torch.save({"model": {}, "sam_distill": {"config": {"model": {"_target_": "os.system", "command": "true"}}}},
               hostile)
    with pytest.raises(DistillError, match="'os.system'"):
        sam2_models.load_sam2_file(hostile)


def test_distilled_sam2_student_loads_and_predicts_in_sam2_unchanged(run_quickstart_small, image):
    """The whole mobilesam recipe on a SAM 2.1 teacher: the cache holds the three outputs, one loss each, and the
    model file is sam2's: rebuilt from model.yaml by hydra, loaded by sam2's own loader, predicting in
    SAM2ImagePredictor what our loading of it predicts."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sam2.build_sam import _load_checkpoint
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam_distill.data.cache import EmbeddingCache

    run = run_quickstart_small("configs/sam2_quickstart.yaml", {"synthetic": {"count": 3, "size": 256},
                                                                 "holdout_fraction": 0.34})
    cache = EmbeddingCache(run / "cache")
    assert cache.outputs == ("image_embed", "high_res_feats_0", "high_res_feats_1")
    assert {name: tuple(value.shape) for name, value in cache.targets(0).items()} == {
        "image_embed": (256, 64, 64), "high_res_feats_0": (32, 256, 256), "high_res_feats_1": (64, 128, 128)}
    assert cache.identity["preprocessing"]["resize"] == "square"
    header = (run / "checkpoints" / "distill" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"mse_{name}" in header for name in cache.outputs)
    # EdgeSAM's stage through SAM 2's own decoder: the student's three outputs, the teacher's cached ones
    prompt_metrics = (run / "checkpoints" / "prompt" / "metrics.csv").read_text().splitlines()
    assert "mask_bce" in prompt_metrics[0] and len(prompt_metrics) == 2
    fidelity = json.loads((run / "reports" / "fidelity.json").read_text())
    assert fidelity["images"] == 1 and 0 <= fidelity["summary"]["box_miou"] <= 1
    # the closing report benches teacher and student as SAM 2 files and puts the fidelity on the student's row
    rows = {row["kind"]: row for row in json.loads((run / "reports" / "results.json").read_text())["rows"]}
    assert rows["sam-distill-sam2"]["point_miou"] == fidelity["summary"]["point_miou"]
    assert rows["sam2"]["role"] == "teacher" and rows["sam-distill-sam2"]["total_p50_ms"] > 0

    model_file = run / "model" / "model.pt"
    theirs = instantiate(OmegaConf.load(run / "model" / "model.yaml").model, _recursive_=True)
    _load_checkpoint(theirs, str(model_file))  # sam2's loader: weights_only, strict
    assert type(theirs.image_encoder.trunk).__name__ == "Hiera"
    ours, name, _ = sam2_models.load_sam2_file(model_file)
    assert name == "hiera_nano"
    prompt = dict(point_coords=np.array([[190.0, 140.0]]), point_labels=np.array([1]), multimask_output=True)
    answers = []
    for model in (theirs.eval(), ours):
        predictor = SAM2ImagePredictor(model)
        with torch.inference_mode():
            predictor.set_image(image)
            answers.append(predictor.predict(**prompt))
    assert np.array_equal(answers[0][0], answers[1][0]) and np.allclose(answers[0][1], answers[1][1])


def test_sam2_onnx_pair_has_the_runners_interface_and_parity(nano_teacher, tmp_path, image):
    """The exported pair as SAM 2 ONNX runners (samexporter, AnyLabeling) call it: encoder outputs and the seven
    decoder inputs in their order, fed by position; fp32 parity against SAM2ImagePredictor in parity.json."""
    import onnxruntime as ort
    from PIL import Image
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam_distill.cli import main

    model_file = tmp_path / "sam2.pt"
    torch.save({"model": nano_teacher.model.state_dict()}, model_file)
    Image.fromarray(image).save(tmp_path / "parity.png")
    out = tmp_path / "onnx"
    assert main(["export", str(model_file), "--format", "onnx", "--out", str(out),
                 "--parity-images", str(tmp_path), "--parity-count", "1"]) == 0
    parity = json.loads((out / "parity.json").read_text())["files"]
    assert parity["encoder.onnx"]["within_tolerance"] and parity["encoder.onnx"]["embedding_max_abs"] < 1e-4
    assert parity["decoder.onnx"]["point_mask_iou"] > 0.99 and parity["decoder.onnx"]["box_mask_iou"] > 0.99
    encoder = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in encoder.get_outputs()] == ["high_res_feats_0", "high_res_feats_1", "image_embed"]
    names = [i.name for i in decoder.get_inputs()]
    assert names == ["image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                     "mask_input", "has_mask_input"]
    # a runner's own preprocessing (plain bilinear resize of the uint8 image) and positional feed
    resized = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.BILINEAR), np.float32) / 255
    pixels = ((resized - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    high_res_0, high_res_1, embed = encoder.run(None, {"image": pixels})
    point = np.array([[[190.0 * 1024 / 400, 140.0 * 1024 / 300]]], np.float32)
    inputs = (embed, high_res_0, high_res_1, point, np.array([[1.0]], np.float32),
              np.zeros((1, 1, 256, 256), np.float32), np.zeros(1, np.float32))
    low_res, scores = decoder.run(None, {names[i]: inputs[i] for i in range(len(names))})
    assert low_res.shape == (1, 3, 256, 256) and scores.shape == (1, 3)
    predictor = SAM2ImagePredictor(nano_teacher.model)
    with torch.inference_mode():
        predictor.set_image(image)
        _, reference_scores, reference_low_res = predictor.predict(point_coords=np.array([[190.0, 140.0]]),
                                                                   point_labels=np.array([1]))
    agreement = ((low_res[0] > 0) == (reference_low_res > 0)).mean()
    assert agreement > 0.99 and np.allclose(scores[0], reference_scores, atol=0.02)


def test_ground_truth_miou_runs_sam2_through_its_own_predictor(nano_teacher, image, tmp_path):
    """`distill eval miou` on a SAM 2 file: the box protocol's figure is SAM2ImagePredictor's box mask against the
    ground truth, computed by hand here."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam_distill.cli import main

    truth = np.zeros(image.shape[:2], np.uint8)
    truth[80:200, 120:260] = 1
    rle = mask_utils.encode(np.asfortranarray(truth))
    rle["counts"] = rle["counts"].decode()
    (tmp_path / "images").mkdir()
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 300}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": rle,
                             "area": float(truth.sum()), "bbox": [120, 80, 140, 120]}],
            "categories": [{"id": 1, "name": "box"}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    model_file = tmp_path / "sam2.pt"
    torch.save({"model": nano_teacher.model.state_dict()}, model_file)
    assert main(["eval", "miou", str(model_file), "--coco", str(tmp_path / "gt.json"), "--images",
                 str(tmp_path / "images"), "--split", "all", "--clicks", "1", "--out", str(tmp_path / "m.json")]) == 0
    summary = json.loads((tmp_path / "m.json").read_text())["summary"]
    predictor = SAM2ImagePredictor(nano_teacher.model)
    with torch.inference_mode():
        predictor.set_image(image)
        box = predictor.predict(box=np.array([120.0, 80.0, 260.0, 200.0]), multimask_output=False)[0][0] > 0
    expected = (box & (truth > 0)).sum() / (box | (truth > 0)).sum()
    assert summary["objects"] == 1 and summary["box_miou"] == pytest.approx(expected, abs=1e-9)
