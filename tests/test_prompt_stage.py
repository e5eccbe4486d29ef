"""EdgeSAM's prompt-in-the-loop stage with its first prompts drawn from annotated instances: the instance masks
follow every cached view of an image onto the model input, the prompts land on the instances (a point inside one,
or its tight box, no instance twice), the loss trains the student only, one-click prompts distil SAM's three
multimask outputs, and a config that cannot draw from annotations fails before any training."""
import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import masks_to_boxes

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.data.cache import AnnotatedDistillDataset, EmbeddingCache, build_cache, view_of
from sam_distill.methods.mobilesam.config import PromptStageConfig
from sam_distill.methods.mobilesam.stages import check_decoder_training, prompt_source
from sam_distill.methods.sections import DataConfig
from sam_distill.students import create_student
from sam_distill.train.prompt_loop import PromptLoopObjective, StudentWithDecoder

VIEWS = ("identity", "hflip", "vflip", "rot90")
RED, BLUE = (250, 0, 0), (0, 0, 250)


@pytest.fixture(scope="module")
def annotated_cache(tiny_teacher, tmp_path_factory):
    """One 96×160 image (not square, so resizing and padding matter) with a red and a blue rectangle, its COCO
    json (polygons), and the tiny teacher's cache of four views of it."""
    folder = tmp_path_factory.mktemp("annotated")
    (folder / "images").mkdir()
    image = np.full((96, 160, 3), 90, np.uint8)
    image[10:30, 20:60] = RED
    image[50:90, 110:150] = BLUE
    Image.fromarray(image).save(folder / "images" / "scene.png")

    def rectangle(ann_id, x0, y0, x1, y1):
        return {"id": ann_id, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": (x1 - x0) * (y1 - y0),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]}

    coco = {"images": [{"id": 1, "file_name": "scene.png", "height": 96, "width": 160}],
            "annotations": [rectangle(1, 20, 10, 60, 30), rectangle(2, 110, 50, 150, 90)],
            "categories": [{"id": 1, "name": "rectangle"}]}
    (folder / "annotations.json").write_text(json.dumps(coco))
    cache_dir = folder / "cache"
    build_cache(tiny_teacher, folder / "images", cache_dir, shard_size=4, context=DistContext(),
                log=lambda message: None, views=VIEWS)
    return folder, cache_dir


def _dataset(annotated_cache) -> AnnotatedDistillDataset:
    folder, cache_dir = annotated_cache
    return AnnotatedDistillDataset(EmbeddingCache(cache_dir), folder / "annotations.json", folder / "images")


def test_instance_masks_follow_every_view_onto_the_model_input(annotated_cache):
    dataset = _dataset(annotated_cache)
    assert sorted(view_of(dataset.cache.entries[i]) for i in dataset.indices) == sorted(VIEWS)
    for i in range(len(dataset)):
        image, embedding, masks = dataset[i]
        assert masks.dtype == torch.bool and masks.shape == (2, 256, 256)
        # Under each instance's mask the preprocessed pixels are that rectangle's colour: red is high in channel 0
        # and low in channel 2 (SAM's normalisation puts 250 at about +2.2 and 0 at about -1.8), blue the reverse.
        red_under = image[:, masks[0]].mean(1)
        blue_under = image[:, masks[1]].mean(1)
        view = view_of(dataset.cache.entries[dataset.indices[i]])
        assert red_under[0] > 1.8 and red_under[2] < -1.4, view
        assert blue_under[2] > 1.8 and blue_under[0] < -1.4, view
        # 160 px wide → 256: the red rectangle is 40×20 px, 64×32 on the input; a rotated view swaps the sides.
        areas = sorted(int(m.sum()) for m in masks)
        assert areas[0] == pytest.approx(64 * 32, rel=0.1) and areas[1] == pytest.approx(64 * 64, rel=0.1), view


def test_first_prompts_are_points_inside_and_boxes_of_distinct_instances(tiny_teacher):
    objective = PromptLoopObjective(create_student("timm_test_efficientnet", image_size=256),
                                    copy.deepcopy(tiny_teacher), prompts_per_image=4, seed=0)
    masks = torch.zeros(6, 256, 256, dtype=torch.bool)
    for k in range(6):
        masks[k, 10 + 40 * k: 40 + 40 * k, 20 + 10 * k: 90 + 20 * k] = True
    images = torch.ones(1, 3, 256, 256)
    point_set, box_set = objective._initial_prompts(images, 0, None, masks)
    coords, labels = point_set["points"]
    assert coords.shape == (2, 1, 2) and labels.tolist() == [[1.0], [1.0]]
    pointed = [int(masks[:, int(y), int(x)].nonzero()) for x, y in coords[:, 0].tolist()]
    tight = masks_to_boxes(masks).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])
    boxed = [int((tight == box).all(1).nonzero()) for box in box_set["boxes"]]
    assert len(set(pointed + boxed)) == 4  # four prompts, four different instances

    lone = objective._initial_prompts(images, 0, None, masks[:1])
    assert len(lone) == 1
    prompt = lone[0]
    if "boxes" in prompt:
        assert prompt["boxes"].tolist() == tight[:1].tolist()
    else:
        x, y = prompt["points"][0][0, 0].tolist()
        assert masks[0, int(y), int(x)]


def test_prompt_loop_on_annotated_batches_trains_only_the_student(tiny_teacher, annotated_cache):
    dataset = _dataset(annotated_cache)
    teacher = copy.deepcopy(tiny_teacher)
    torch.manual_seed(0)
    student = create_student("timm_test_efficientnet", image_size=256)
    objective = PromptLoopObjective(student, teacher, prompts_per_image=2, refine_iterations=1, seed=0)
    batch = objective.collate([dataset[0], dataset[1]])
    assert batch[0].shape == (2, 3, 256, 256) and [len(m) for m in batch[2]] == [2, 2]
    loss = sum(objective.losses(student, batch).values())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.model.parameters())
    assert sum(p.grad.abs().sum() for p in student.parameters() if p.grad is not None) > 0
    # The teacher's own encoder as the student scores better than a random one on the same prompts. (Not zero:
    # BCE and soft Dice of the teacher's logits against its own thresholded masks.)
    with torch.no_grad():
        perfect = sum(PromptLoopObjective(student, teacher, 2, 1, seed=0).losses(
            copy.deepcopy(tiny_teacher.model.image_encoder), batch).values())
    assert perfect < loss.detach()


def test_multimask_distils_the_three_outputs_that_answer_one_click(tiny_teacher, annotated_cache):
    """SamPredictor answers one click with the decoder's three multimask outputs (mask tokens 1-3), not with the
    single-mask output (token 0). Changing the heads that turn tokens 1-3 into masks changes the loss only when the
    stage distils those outputs."""
    dataset = _dataset(annotated_cache)
    torch.manual_seed(0)
    student = create_student("timm_test_efficientnet", image_size=256)

    def loss(teacher, multimask):
        objective = PromptLoopObjective(student, teacher, prompts_per_image=2, refine_iterations=0, seed=0,
                                        multimask=multimask)
        batch = objective.collate([dataset[0], dataset[1]])
        with torch.no_grad():
            return sum(objective.losses(student, batch).values()).item()

    teacher, altered = copy.deepcopy(tiny_teacher), copy.deepcopy(tiny_teacher)
    with torch.no_grad():
        for head in altered.model.mask_decoder.output_hypernetworks_mlps[1:]:
            head.layers[-1].bias += 0.5
    assert loss(altered, multimask=False) == loss(teacher, multimask=False)
    assert loss(altered, multimask=True) != pytest.approx(loss(teacher, multimask=True), rel=1e-4)


def test_iou_weight_adds_the_score_disagreement_of_the_one_click_outputs(tiny_teacher, annotated_cache):
    """SamPredictor keeps the best-scored of the three one-click masks, so ``iou_weight`` adds the MSE between the
    decoder's scores for the student's masks and for the teacher's: a term that scales with its weight, reaches the
    student's weights, and leaves the mask terms as they were."""
    dataset = _dataset(annotated_cache)
    torch.manual_seed(0)
    student = create_student("timm_test_efficientnet", image_size=256)

    def losses(iou_weight):
        objective = PromptLoopObjective(student, tiny_teacher, prompts_per_image=2, refine_iterations=0, seed=0,
                                        iou_weight=iou_weight)
        student.zero_grad()
        values = objective.losses(student, objective.collate([dataset[0], dataset[1]]))
        return objective.loss_names, values

    names, plain = losses(0.0)
    assert names == ("mask_bce", "mask_dice")
    names, weighted = losses(1.0)
    assert names == ("mask_bce", "mask_dice", "iou_mse")
    assert weighted["mask_bce"].item() == pytest.approx(plain["mask_bce"].item())
    assert weighted["mask_dice"].item() == pytest.approx(plain["mask_dice"].item())
    assert weighted["iou_mse"].item() > 0
    weighted["iou_mse"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    _, doubled = losses(2.0)
    assert doubled["iou_mse"].item() == pytest.approx(2 * weighted["iou_mse"].item(), rel=1e-5)


def test_embedding_weight_keeps_the_decoupled_stage_mse_as_a_term(tiny_teacher, annotated_cache):
    """EdgeSAM's PIXEL_WISE term: the weighted MSE between the student's embedding and the teacher's cached one,
    beside the mask terms, which it leaves as they were."""
    dataset = _dataset(annotated_cache)
    torch.manual_seed(0)
    student = create_student("timm_test_efficientnet", image_size=256)
    objective = PromptLoopObjective(student, tiny_teacher, prompts_per_image=2, refine_iterations=0, seed=0,
                                    embedding_weight=3.0)
    assert objective.loss_names == ("mask_bce", "mask_dice", "embedding_mse")
    batch = objective.collate([dataset[0], dataset[1]])
    with torch.no_grad():
        losses = objective.losses(student, batch)
        plain = PromptLoopObjective(student, tiny_teacher, prompts_per_image=2, refine_iterations=0,
                                    seed=0).losses(student, batch)
        expected = 3.0 * ((student(batch[0]) - batch[1]) ** 2).mean()
    assert losses["embedding_mse"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["mask_bce"].item() == pytest.approx(plain["mask_bce"].item())


def test_train_decoder_answers_through_the_students_own_decoder_copy(tiny_teacher, annotated_cache):
    """EdgeSAM's enc_dec: the student's decoder starts as the teacher's (the same losses as a bare student on the
    same prompts), then gets the gradient, while the teacher's decoder and prompt encoder stay frozen."""
    dataset = _dataset(annotated_cache)
    teacher = copy.deepcopy(tiny_teacher)
    torch.manual_seed(0)
    encoder = create_student("timm_test_efficientnet", image_size=256)
    student = StudentWithDecoder(encoder, teacher.model.mask_decoder)
    assert student.mask_decoder is not teacher.model.mask_decoder
    assert set(student.state_dict()) <= set(teacher.model.state_dict()) | {
        f"image_encoder.{key}" for key in encoder.state_dict()}  # loads into a segment-anything Sam

    def objective():
        return PromptLoopObjective(student, teacher, prompts_per_image=2, refine_iterations=1, seed=0)

    batch = objective().collate([dataset[0], dataset[1]])
    with torch.no_grad():
        bare = objective().losses(encoder, batch)
    own = objective().losses(student, batch)
    for name in bare:
        assert own[name].item() == pytest.approx(bare[name].item(), rel=1e-5)
    sum(own.values()).backward()
    assert all(p.grad is None for p in teacher.model.parameters())
    assert sum(p.grad.abs().sum() for p in student.mask_decoder.parameters() if p.grad is not None) > 0
    assert sum(p.grad.abs().sum() for p in encoder.parameters() if p.grad is not None) > 0
    with pytest.raises(DistillError, match="train_decoder is available for SAM teachers only"):
        check_decoder_training(PromptStageConfig(enabled=True, train_decoder=True), SimpleNamespace(family="sam2"))
    check_decoder_training(PromptStageConfig(enabled=True, train_decoder=True), tiny_teacher)


def test_prompts_from_annotations_without_annotations_fail_before_training():
    with pytest.raises(DistillError, match="prompt_stage.prompts: annotations needs data.annotations"):
        prompt_source(PromptStageConfig(prompts="annotations"), DataConfig(images="photos"))
    assert prompt_source(PromptStageConfig(), DataConfig(images="photos")) == "random"
    assert prompt_source(PromptStageConfig(), DataConfig(images="photos", annotations="a.json")) == "annotations"
    assert prompt_source(PromptStageConfig(prompts="random"),
                         DataConfig(images="photos", annotations="a.json")) == "random"
