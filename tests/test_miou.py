"""SAM's ground-truth protocols (eval/miou.py): the click samplers and the per-object bookkeeping against values
worked out by hand, then the whole evaluation on a small random SAM."""
from __future__ import annotations

import numpy as np
import pytest

from sam_distill.core.errors import DistillError
from sam_distill.eval.miou import (
    box_mask,
    farthest_from_boundary,
    format_miou_table,
    ground_truth_miou,
    headline_scores,
    next_click,
    object_ious,
    size_name,
)


def rectangle(shape=(20, 20), rows=(2, 7), cols=(3, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_farthest_from_boundary_click_by_hand():
    # Rows 2..6, cols 3..9: the pixels 3 away from every edge are row 4, cols 5..7; the first is (x=5, y=4).
    assert farthest_from_boundary(rectangle()) == ((5, 4), 3.0)
    # The image border is a boundary too: a mask filling the whole 5×5 image peaks at its centre, 3 from the border.
    assert farthest_from_boundary(np.ones((5, 5), dtype=bool)) == ((2, 2), 3.0)


def test_corrective_clicks_go_to_the_larger_error_region():
    ground_truth = rectangle()
    # Nothing predicted yet: the first click is the positive farthest-from-boundary click.
    assert next_click(ground_truth, np.zeros_like(ground_truth)) == ((5, 4), True)
    # The object found, plus a 9×9 false positive at rows 10..18, cols 10..18 (centre 5 px from its edges).
    prediction = ground_truth.copy()
    prediction[10:19, 10:19] = True
    assert next_click(ground_truth, prediction) == ((14, 14), False)
    # A 1-px sliver of false negative against that blob: the negative click still wins.
    prediction[2, 3] = False
    assert next_click(ground_truth, prediction)[1] is False
    # Only a small false negative (the left column of the object): a positive click inside it.
    assert next_click(ground_truth, ground_truth & ~rectangle(cols=(3, 4))) == ((3, 2), True)


class ScriptedPredictor:
    """Answers SamPredictor.predict from a script, recording what it was asked."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True):
        self.calls.append({"points": None if point_coords is None else point_coords.tolist(),
                           "labels": None if point_labels is None else point_labels.tolist(),
                           "box": None if box is None else box.tolist(), "mask_input": mask_input,
                           "multimask": multimask_output})
        masks, scores = self.answers.pop(0)
        return np.stack(masks), np.asarray(scores, dtype=np.float32), np.full((len(masks), 4, 4), float(len(self.calls)))


def test_object_protocol_bookkeeping_by_hand():
    ground_truth = rectangle()  # 35 px
    half = rectangle(cols=(3, 7))  # 20 of them
    nearly = rectangle(rows=(2, 6))  # 28 of them
    wrong = rectangle(rows=(12, 17))  # disjoint
    predictor = ScriptedPredictor([
        ([half], [0.9]),  # box prompt
        ([wrong, half, ground_truth], [0.1, 0.8, 0.5]),  # click 1: multimask, the best-scored mask (half) is kept
        ([nearly], [0.9]),  # click 2
        ([ground_truth], [0.9]),  # click 3
    ])
    result = object_ious(predictor, ground_truth, [3, 2, 7, 5], max_clicks=3)
    assert result["box"] == pytest.approx(20 / 35)
    assert result["box_as_mask"] == 1.0  # the box is the rectangle itself
    assert result["clicks"] == pytest.approx([20 / 35, 28 / 35, 1.0])
    assert result["noc85"] == 3 and result["noc90"] == 3
    box_call, first, second, third = predictor.calls
    assert box_call["box"] == [3, 2, 10, 7] and box_call["multimask"] is False
    assert first["points"] == [[5, 4]] and first["labels"] == [1] and first["multimask"] and first["mask_input"] is None
    # Click 2 corrects "half": the missing part (rows 2..6, cols 7..9) is the false negative; 2 px deep at col 8,
    # rows 3..5, so the first of those, (8, 3).
    assert second["points"] == [[5, 4], [8, 3]] and second["labels"] == [1, 1] and not second["multimask"]
    assert second["mask_input"].shape == (1, 4, 4) and second["mask_input"][0, 0, 0] == 2.0  # click 1's logits fed back
    assert third["points"][-1] == [3, 6]  # the last row (row 6) missing from "nearly": its first farthest pixel


def test_noc_counts_max_clicks_when_never_reached():
    ground_truth = rectangle()
    predictor = ScriptedPredictor([([ground_truth], [1.0])] + [([rectangle(cols=(3, 7))], [1.0])] * 2)
    result = object_ious(predictor, ground_truth, [3, 2, 7, 5], max_clicks=2)
    assert result["noc85"] == 2 and result["noc90"] == 2 and max(result["clicks"]) < 0.85


def test_box_as_mask_and_sizes():
    assert box_mask([1.5, 2, 2, 3], 8, 8).sum() == 3 * 3  # columns 1..3 (1.5 → 3.5), rows 2..4
    assert [size_name(a) for a in (31 ** 2, 32 ** 2, 96 ** 2)] == ["small", "medium", "large"]


def test_ground_truth_miou_on_a_random_sam(tmp_path):
    import torch

    from sam_distill.data.coco import make_synthetic_coco
    from sam_distill.sam.build import build_sam

    annotations = make_synthetic_coco(tmp_path / "coco", count=2, size=96, seed=3)
    images = annotations.parent / "images"

    torch.manual_seed(0)
    sam = build_sam("vit_tiny", 128)
    result = ground_truth_miou(sam, annotations, images, max_clicks=3, progress=False)
    summary = result["summary"]
    assert summary["objects"] == len(result["objects"]) >= 4
    assert set(result["per_class"]) <= {"disc", "square", "triangle"}
    assert sum(s["objects"] for s in result["per_size"].values()) == summary["objects"]
    for key in ("box_miou", "point_miou", "clicks_3_miou", "box_as_mask_miou"):
        assert 0.0 <= summary[key] <= 1.0
    assert 1 <= summary["noc85"] <= 3
    # Shapes fill most of their box: the box alone already scores well, as the baseline row should show.
    assert summary["box_as_mask_miou"] > 0.5
    again = ground_truth_miou(sam, annotations, images, max_clicks=3, progress=False)
    assert again["summary"] == summary  # deterministic
    table = format_miou_table(result).splitlines()
    assert table[1].split()[-6:] == ["clicks", "NoC@85", "NoC@90", "box", "as", "mask"]
    assert [float(v) for v in table[3].split()[2:]] == pytest.approx(
        [summary[k] for k in ("box_miou", "point_miou", "clicks_3_miou", "noc85", "noc90", "box_as_mask_miou")], abs=6e-3)
    one_click = ground_truth_miou(sam, annotations, images, max_clicks=1, progress=False)
    table_1 = format_miou_table(one_click)
    assert "NoC" not in table_1 and "1 clicks" not in table_1  # one click: no repeated column, no NoC
    assert set(headline_scores(one_click["summary"], 1)) == {"box_miou", "point_miou", "box_as_mask_miou",
                                                            "clicks_1_miou"}  # nor NoC in the report's columns
    assert {"noc85", "noc90"} <= set(headline_scores(summary, 3))


def test_ground_truth_miou_refuses_what_it_cannot_score(tmp_path):
    from sam_distill.sam.build import build_sam

    (tmp_path / "empty.json").write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(DistillError, match="no readable image"):
        ground_truth_miou(build_sam("vit_tiny", 64), tmp_path / "empty.json", tmp_path, progress=False)


def test_distill_eval_miou_command(tmp_path, capsys):
    import json

    import torch

    from sam_distill.cli import main
    from sam_distill.data.coco import make_synthetic_coco
    from sam_distill.sam.build import build_sam

    annotations = make_synthetic_coco(tmp_path / "coco", count=3, size=96, seed=5)
    torch.manual_seed(0)
    model = tmp_path / "sam.pth"
    torch.save(build_sam("vit_tiny", 128).state_dict(), model)
    out = tmp_path / "miou.json"
    assert main(["eval", "miou", str(model), "--coco", str(annotations), "--images", str(annotations.parent / "images"),
                 "--clicks", "2", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["max_clicks"] == 2 and "clicks_2_miou" in result["summary"]
    assert "box as mask" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["eval", "miou", str(tmp_path / "notes.txt"), "--coco", str(annotations), "--images", str(tmp_path)]) == 2
    assert "notes.txt is not a model file" in capsys.readouterr().err


def test_eval_miou_scores_an_exported_onnx_pair_like_the_model_it_came_from(tmp_path, capsys):
    """`distill eval miou encoder.onnx --decoder decoder.onnx` runs the same protocols through onnxruntime: an fp32
    pair scores what its PyTorch model scores; an encoder without its decoder is one line."""
    import json

    import torch

    from sam_distill.cli import main
    from sam_distill.data.coco import make_synthetic_coco
    from sam_distill.export.onnx_export import export_decoder, export_encoder
    from sam_distill.sam.build import build_sam

    annotations = make_synthetic_coco(tmp_path / "coco", count=2, size=96, seed=3)
    images = annotations.parent / "images"
    torch.manual_seed(0)
    sam = build_sam("vit_tiny", 128).eval()
    encoder, decoder = export_encoder(sam, tmp_path / "encoder.onnx", 17), export_decoder(sam, tmp_path / "decoder.onnx", 17)
    reference = ground_truth_miou(sam, annotations, images, max_clicks=2, progress=False)["summary"]
    out = tmp_path / "onnx.json"
    assert main(["eval", "miou", str(encoder), "--decoder", str(decoder), "--coco", str(annotations),
                 "--images", str(images), "--clicks", "2", "--out", str(out)]) == 0
    exported = json.loads(out.read_text())
    assert exported["model"] == f"{encoder} + {decoder}"
    assert exported["summary"]["objects"] == reference["objects"]
    for key in ("box_miou", "point_miou", "clicks_2_miou", "box_as_mask_miou"):
        assert exported["summary"][key] == pytest.approx(reference[key], abs=0.01), key
    capsys.readouterr()
    assert main(["eval", "miou", str(encoder), "--coco", str(annotations), "--images", str(images)]) == 2
    assert "--decoder DECODER.onnx" in capsys.readouterr().err
    assert main(["eval", "miou", str(decoder), "--decoder", str(encoder), "--coco", str(annotations),
                 "--images", str(images)]) == 2
    assert "not a SAM encoder (input image) and decoder" in capsys.readouterr().err


def test_a_convnet_sam_runs_at_another_input_size_and_a_vit_says_it_cannot(convnet_sam_file, tiny_teacher_checkpoint,
                                                                            tmp_path, capsys):
    """`--image-size N` runs a model file at another size than it was trained at (remote-sensing objects one or two
    embedding cells across gain from it): the same weights on a finer embedding grid for a ConvNet encoder; one
    line for a ViT, whose position embeddings hold its own size, for a size off the 16-pixel grid, and for an
    exported graph."""
    import json

    import torch

    from sam_distill.cli import main
    from sam_distill.data.coco import make_synthetic_coco
    from sam_distill.sam.model_file import load_model

    annotations = make_synthetic_coco(tmp_path / "coco", count=2, size=96, seed=3)
    images = annotations.parent / "images"
    convnet = convnet_sam_file
    trained, _ = load_model(convnet)
    larger, info = load_model(convnet, image_size=192)
    assert info.image_size == 192 and larger.image_encoder.img_size == 192
    assert larger.prompt_encoder.image_embedding_size == (12, 12)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), larger.state_dict().values()))
    with torch.no_grad():
        assert larger.image_encoder(torch.zeros(1, 3, 192, 192)).shape == (1, 256, 12, 12)

    out = tmp_path / "miou.json"
    assert main(["eval", "miou", str(convnet), "--image-size", "192", "--coco", str(annotations), "--images",
                 str(images), "--clicks", "1", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["image_size"] == 192
    assert result["summary"] == ground_truth_miou(larger, annotations, images, max_clicks=1, progress=False)["summary"]
    assert result["summary"] != ground_truth_miou(trained, annotations, images, max_clicks=1, progress=False)["summary"]

    vit = tiny_teacher_checkpoint
    for model, size, message in ((vit, "192", "runs at 256 px only"), (convnet, "200", "give a positive multiple of 16 (e.g. 208)")):
        capsys.readouterr()
        assert main(["eval", "miou", str(model), "--image-size", size, "--coco", str(annotations),
                     "--images", str(images)]) == 2
        assert message in capsys.readouterr().err
    encoder = tmp_path / "encoder.onnx"
    encoder.write_bytes(b"")
    assert main(["eval", "miou", str(encoder), "--decoder", str(encoder), "--image-size", "192", "--coco",
                 str(annotations), "--images", str(images)]) == 2
    assert "an exported graph, which runs at the input size it was exported at" in capsys.readouterr().err


def test_a_convnet_checkpoint_trains_on_at_another_input_size_and_a_vit_checkpoint_says_it_cannot(
        convnet_sam_file, tiny_teacher_checkpoint):
    """`encoder.checkpoint` with another `encoder.image_size`: a ConvNet teacher fine-tuned at one size goes on
    at another with the same weights on the finer grid; a ViT's file names the size to set."""
    import torch

    from sam_distill.sam.model_file import build_sam_for, load_model

    trained, _ = load_model(convnet_sam_file)
    larger = build_sam_for("timm_test_efficientnet", 192, convnet_sam_file)
    assert larger.image_encoder.img_size == 192 and larger.prompt_encoder.image_embedding_size == (12, 12)
    assert larger.prompt_encoder.input_image_size == (192, 192)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), larger.state_dict().values()))
    with pytest.raises(DistillError, match=r"runs at 256 px only, not 192: its encoder \(ImageEncoderViT\) .*; set image_size to 256$"):
        build_sam_for("vit_tiny", 192, tiny_teacher_checkpoint)


def test_bench_runs_a_model_file_at_another_input_size(convnet_sam_file, tiny_teacher_checkpoint):
    from sam_distill.eval.bench import bench_many

    convnet, vit = convnet_sam_file, tiny_teacher_checkpoint
    result = bench_many([str(convnet), str(vit)], runs=1, warmup=0, memory=False, image_size=192, log=lambda m: None)
    assert [row["image_size"] for row in result["rows"]] == [192]
    assert "runs at 256 px only" in result["skipped"][0]["reason"]
    assert bench_many([str(convnet)], runs=1, warmup=0, memory=False, log=lambda m: None)["rows"][0]["image_size"] == 128
