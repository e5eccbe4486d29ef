import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from sam_distill.core.errors import DistillError
from sam_distill.core.images import find_images, load_rgb
from sam_distill.data.cache import EmbeddingCache
from sam_distill.eval.fidelity import fidelity, format_table
from sam_distill.sam.model_file import assemble, load_model, save_mobilesam_layout, save_model
from sam_distill.students import create_student, list_students


def test_tinyvit_5m_is_mobilesams_encoder_key_for_key():
    from ultralytics.models.sam.build import build_mobile_sam

    reference = build_mobile_sam().image_encoder
    ours = create_student("tinyvit_5m")
    ours_sd, ref_sd = ours.state_dict(), reference.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ours_sd)
    # Weights travel both ways and compute the same thing.
    torch.manual_seed(0)
    trained = create_student("tinyvit_5m")
    reference.load_state_dict(trained.state_dict())
    ours.load_state_dict(reference.state_dict())
    for model in (reference, ours, trained):
        model.set_imgsz([256, 256])
        model.eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(reference(x), trained(x)) and torch.allclose(ours(x), trained(x))


@pytest.mark.parametrize("name", ["tinyvit_5m", "timm_test_efficientnet", "timm_test_vit"])
def test_students_give_sam_embeddings(name):
    student = create_student(name, image_size=256).eval()
    with torch.no_grad():
        assert student(torch.randn(2, 3, 256, 256)).shape == (2, 256, 16, 16)
    assert student.img_size == 256


def test_unknown_students_are_named():
    assert "tinyvit_5m" in list_students()
    with pytest.raises(DistillError, match="unknown student 'tinyvit_9m'.*tinyvit_5m"):
        create_student("tinyvit_9m")
    with pytest.raises(DistillError, match="timm has no model 'nope'"):
        create_student("timm_nope")


def test_assembled_model_works_with_sam_predictor_and_round_trips(tiny_teacher, image_folder, tmp_path):
    torch.manual_seed(0)
    model = assemble(create_student("timm_test_efficientnet", image_size=256), tiny_teacher.model)
    assert torch.equal(model.mask_decoder.iou_prediction_head.layers[0].weight,
                       tiny_teacher.model.mask_decoder.iou_prediction_head.layers[0].weight)
    path = save_model(model, tmp_path / "model.pt", "timm_test_efficientnet", {"note": "test"})
    loaded, info = load_model(path)
    assert info.student == "timm_test_efficientnet" and info.image_size == 256 and info.meta == {"note": "test"}
    predictor = SamPredictor(loaded)
    image = load_rgb(find_images(image_folder)[0])
    predictor.set_image(image)
    h, w = image.shape[:2]
    masks, scores, low_res = predictor.predict(point_coords=np.array([[w / 2, h / 2]]), point_labels=np.array([1]))
    assert masks.shape == (3, h, w) and scores.shape == (3,)
    box_masks, _, _ = predictor.predict(box=np.array([5, 5, w - 5, h - 5]), multimask_output=False)
    assert box_masks.shape == (1, h, w)
    refined, _, _ = predictor.predict(point_coords=np.array([[w / 3, h / 3]]), point_labels=np.array([1]),
                                      mask_input=low_res[scores.argmax()][None], multimask_output=False)
    assert refined.shape == (1, h, w)
    # Same weights as saved: same masks.
    original = SamPredictor(model)
    original.set_image(image)
    assert np.array_equal(original.predict(box=np.array([5, 5, w - 5, h - 5]), multimask_output=False)[0], box_masks)


def test_mobilesam_layout_loads_in_ultralytics(tiny_teacher, tmp_path):
    from ultralytics.models.sam.build import build_mobile_sam

    from sam_distill.sam.build import build_sam

    teacher = build_sam("vit_tiny", 1024)
    torch.manual_seed(1)
    model = assemble(create_student("tinyvit_5m"), teacher)
    path = save_mobilesam_layout(model, tmp_path / "mobile_sam.pt")
    theirs = build_mobile_sam(checkpoint=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value), key
    ours, info = load_model(path)
    assert info.student == "tinyvit_5m"


def test_fidelity_of_the_teacher_to_itself_is_perfect(tiny_teacher, tiny_cache):
    cache = EmbeddingCache(tiny_cache)
    import copy

    clone = copy.deepcopy(tiny_teacher.model)
    result = fidelity(tiny_teacher.model, clone, cache, [0, 1], points_per_image=3)
    summary = result["summary"]
    assert summary["embedding_cosine"] > 0.9999 and summary["embedding_mse"] < 1e-5
    # The cache holds fp16 embeddings; masks from them match the full-precision ones.
    assert summary["point_miou"] > 0.98 and summary["box_miou"] > 0.98
    assert "1-point mIoU" in format_table(result)


def test_fidelity_of_a_random_student_is_low(tiny_teacher, tiny_cache):
    cache = EmbeddingCache(tiny_cache)
    torch.manual_seed(0)
    student = assemble(create_student("timm_test_efficientnet", image_size=256), tiny_teacher.model)
    summary = fidelity(tiny_teacher.model, student, cache, [0, 1], points_per_image=3)["summary"]
    assert summary["embedding_cosine"] < 0.5 and summary["embedding_mse"] > 0.1
