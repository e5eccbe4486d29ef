"""The automatic instance methods (RSPrompter's prompters, SAM-det, SAM-seg, SAM-cls) on SAM 2 and HQ-SAM encoders:
taps on Hiera, masks that are the family's own decoder's answers, and saved heads that rebuild their SAM without
the encoder's file. Both SAMs are the random-initialised test architectures (SAM 2.1 with a 5-block Hiera, HQ-SAM
with a 4-block ViT) at 256 px, in their packages' file layouts."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("sam2")
pytest.importorskip("segment_anything_hq")

from sam_distill.data.coco import CocoInstances, make_synthetic_coco  # noqa: E402
from sam_distill.methods.instances import InstanceObjective  # noqa: E402
from sam_distill.train.loop import Schedule, train  # noqa: E402

SIZE = 256


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family_shapes")
    make_synthetic_coco(folder, 3, SIZE, seed=1)
    return CocoInstances(folder / "annotations.json", folder / "images", SIZE)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """name → checkpoint: a SAM 2.1 nano in our SAM 2 layout (its config says 256 px) and an HQ-SAM nano in
    segment-anything-hq's layout (a bare state dict)."""
    from sam_distill.sam import hq_models, sam2_models

    folder = tmp_path_factory.mktemp("family_encoders")
    torch.manual_seed(0)
    config = sam2_models.model_config(sam2_models.sam2_config("sam2.1_hiera_nano"))
    config["model"]["image_size"] = SIZE
    sam2 = sam2_models.instantiate_model(config, "test")
    sam2_models.save_sam2_model(sam2, config, folder / "sam2.pt", "sam2.1_hiera_nano")
    torch.save(hq_models.build_hq_model("hq_vit_nano", SIZE, seed=0).state_dict(), folder / "hq.pt")
    return {"sam2.1_hiera_nano": folder / "sam2.pt", "hq_vit_nano": folder / "hq.pt"}


def _images(dataset, count=1):
    return torch.stack([dataset[i]["image"] for i in range(count)])


def test_hiera_is_tapped_at_its_stage_ends_and_sam2_parts_give_the_predictors_features(encoders, shapes):
    from sam_distill.sam.families import build_sam_parts
    from sam_distill.sam.teachers import load_teacher
    from sam_distill.students.heads.aggregator import TappedEncoder

    parts = build_sam_parts("sam2.1_hiera_nano", SIZE, encoders["sam2.1_hiera_nano"])
    assert parts.family == "sam2" and parts.image_size == SIZE
    tapped = TappedEncoder(parts)
    trunk = parts.image_encoder.trunk
    assert [tap.module for tap in tapped.taps] == [trunk.blocks[i] for i in trunk.stage_ends]
    assert tapped.channels == [32, 64, 128, 256]  # one map per Hiera stage, strides 4 to 32
    images = _images(shapes)
    with torch.no_grad():
        features, maps = tapped(images)
        expected = load_teacher("sam2.1_hiera_nano", encoders["sam2.1_hiera_nano"]).embed_outputs(images)
    assert [m.shape[-1] for m in maps] == [SIZE // 4, SIZE // 8, SIZE // 16, SIZE // 32]
    torch.testing.assert_close(features.embed, expected["image_embed"])
    torch.testing.assert_close(features.extra["high_res_feats_1"], expected["high_res_feats_1"])


@pytest.mark.parametrize("name", ["sam2.1_hiera_nano", "hq_vit_nano"])
def test_sam_det_masks_are_the_family_decoders_answers_to_its_boxes(encoders, shapes, name):
    """SAM-det prompts the family's own decoder with each detected box (a SAM 2 box as two corner points, an HQ-SAM
    answer as SAM's mask plus the HQ one), exactly as ``Teacher.decode``, which the SAM 2 and HQ-SAM tests hold to
    each package's predictor."""
    from sam_distill.methods.rcnn.model import build_rcnn
    from sam_distill.sam.teachers import load_teacher

    torch.manual_seed(0)
    model = build_rcnn({"method": "sam_det", "encoder": name, "image_size": SIZE, "num_classes": 3, "width": 32},
                       encoders[name]).eval()
    images = _images(shapes)
    prediction = model.predict(images, score_threshold=0.0)[0]
    assert len(prediction["boxes"]) > 0
    teacher = load_teacher(name, encoders[name])
    with torch.no_grad():
        expected = teacher.decode(teacher.embed_outputs(images), boxes=prediction["boxes"])[0][:, 0]
    torch.testing.assert_close(prediction["masks"], expected, atol=1e-4, rtol=1e-4)


def _train_briefly(model, dataset, folder, method: str) -> None:
    schedule = Schedule(epochs=1, batch_size=2, grad_accum=1, lr=1e-3, min_lr=1e-4, weight_decay=0.0, warmup_steps=0,
                        checkpoint_every=100, log_every=100, max_steps=2, num_workers=0)
    train(InstanceObjective(model, method), dataset, schedule, folder, log=lambda message: None)


@pytest.mark.parametrize("name, method, head", [("sam2.1_hiera_nano", "prompter", "query"),
                                                ("hq_vit_nano", "prompter", "anchor"),
                                                ("sam2.1_hiera_nano", "sam_seg", "mask2former")])
def test_heads_train_on_the_family_and_reload_without_the_encoder_file(encoders, shapes, tmp_path, name, method,
                                                                       head):
    """A saved head holds its SAM's family and spec: it loads and predicts the same after the encoder's file is
    gone (the SAM 2 config is rebuilt through the trusted-targets check). The SAM 2 prompter adapts Hiera's
    attention with LoRA, merged into plain weights in the saved file."""
    import shutil

    from sam_distill.methods.prompter.model import build_prompter, load_prompter, save_prompter
    from sam_distill.methods.rcnn.model import build_rcnn, load_rcnn, save_rcnn

    checkpoint = tmp_path / encoders[name].name
    shutil.copyfile(encoders[name], checkpoint)
    torch.manual_seed(0)
    if method == "prompter":
        config = {"encoder": name, "image_size": SIZE, "head": head, "num_classes": 3, "width": 32, "norm": "group",
                  "train_decoder": True, "head_kwargs": {"num_queries": 8, "decoder_layers": 2,
                                                         "pixel_decoder_layers": 1, "heads": 4}}
        if name.startswith("sam2"):
            config.update(train_encoder="lora", lora_rank=2)
        model, save, load = build_prompter(config, checkpoint), save_prompter, load_prompter
        if name.startswith("sam2"):  # one adapter per Hiera block's qkv projection
            assert len(model.adapted) == len(model.sam.image_encoder.trunk.blocks)
    else:
        config = {"method": method, "encoder": name, "image_size": SIZE, "num_classes": 3, "width": 32, "head": head,
                  "mask2former": {"num_queries": 8, "decoder_layers": 2, "pixel_decoder_layers": 1}}
        model, save, load = build_rcnn(config, checkpoint), save_rcnn, load_rcnn
    family = "sam2" if name.startswith("sam2") else "hq"
    assert model.config["sam"]["family"] == family
    _train_briefly(model, shapes, tmp_path / "run", method)
    model.eval()
    images = _images(shapes, 2)
    before = model.predict(images, score_threshold=0.0)
    path = save(model, tmp_path / "head.pt", shapes.classes)
    checkpoint.unlink()
    loaded, classes = load(path)
    after = loaded.predict(images, score_threshold=0.0)
    assert classes == shapes.classes and len(after) == 2
    assert not any(".lora_" in key for key in loaded.state_dict())
    for ours, theirs in zip(before, after):
        torch.testing.assert_close(ours["scores"], theirs["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours["masks"].float(), theirs["masks"].float(), atol=1e-3, rtol=1e-3)


def test_sam_cls_runs_each_familys_everything_mode_and_decoder(encoders, tmp_path):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from segment_anything_hq import SamAutomaticMaskGenerator

    from sam_distill.methods.sam_cls.model import SamCls, load_sam_cls
    from sam_distill.sam.families import ImageFeatures, load_family_model

    classes = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    generators = {"sam2.1_hiera_nano": SAM2AutomaticMaskGenerator, "hq_vit_nano": SamAutomaticMaskGenerator}
    for name, generator in generators.items():
        sam, family, spec = load_family_model(name, SIZE, encoders[name])
        config = {"encoder": name, "image_size": SIZE, "classifier": "pooled", "geometry": True, "hidden": 16,
                  "match_iou": 0.5, "generator": {"points_per_side": 4, "points_per_batch": 8},
                  "sam": {"family": family, **spec}}
        model = SamCls(sam, config, classes, {})
        assert isinstance(model.everything_generator({}, torch.device("cpu")), generator)
        features = model.embed(torch.randn(3, SIZE, SIZE))
        assert isinstance(features, ImageFeatures) and features.embed.shape == (1, 256, SIZE // 16, SIZE // 16)
        logits = model.decode_and_classify(features)
        assert logits.shape == (16, 3)  # a mask per grid point, background + 2 classes
        loaded = load_sam_cls(model.save(tmp_path / f"{family}.pt"))
        torch.testing.assert_close(loaded.decode_and_classify(features), logits)


@pytest.mark.parametrize("name, head", [("sam2.1_hiera_nano", "query"), ("hq_vit_nano", "anchor")])
def test_prompter_onnx_chain_on_the_family_matches_pytorch(encoders, tmp_path, name, head):
    """encoder.onnx also returns what the family's decoder takes (SAM 2's high-resolution maps, HQ-SAM's early
    feature) and decoder.onnx takes it: the chain in onnxruntime gives the PyTorch model's masks and classes."""
    import json

    from sam_distill.methods.prompter.model import build_prompter
    from sam_distill.methods.prompter.onnx import export_prompter_onnx

    torch.manual_seed(0)
    model = build_prompter({"encoder": name, "image_size": SIZE, "head": head, "num_classes": 2, "width": 32,
                            "norm": "group", "head_kwargs": {"num_queries": 4, "decoder_layers": 1,
                                                             "pixel_decoder": "pyramid", "heads": 4}},
                           encoders[name])
    report = export_prompter_onnx(model, tmp_path / "onnx")
    manifest = json.loads((tmp_path / "onnx" / "prompter.json").read_text())
    expected = {"sam2.1_hiera_nano": ["high_res_feats_0", "high_res_feats_1"], "hq_vit_nano": ["interm_embed_0"]}
    assert manifest["decoder_features"] == expected[name]
    parity = report["parity"]
    assert parity["detections_torch"] > 0 and parity["detections_onnx"] == parity["detections_torch"], parity
    assert parity["class_agreement"] == 1.0 and parity["mask_iou_mean"] > 0.99, parity
    assert parity["max_abs_logit_diff"] < 1e-3, parity
