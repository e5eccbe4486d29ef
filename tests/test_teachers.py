import hashlib

import pytest
import torch

from sam_distill.core.errors import DistillError
from sam_distill.sam.build import build_sam
from sam_distill.sam.checkpoint import load_sam_checkpoint, read_state_dict
from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir, download, resolve_official
from sam_distill.sam.teachers import load_teacher


def test_official_names_resolve_to_official_urls():
    assert TEACHERS.get("sam_vit_h").url == "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    assert TEACHERS.get("sam_vit_b").sha256.startswith("ec2df627")
    assert TEACHERS.get("mobile_sam").arch == "tinyvit_5m"
    assert {TEACHERS.get(n).arch for n in ("sam_vit_h", "sam_vit_l", "sam_vit_b")} == {"vit_h", "vit_l", "vit_b"}


def test_offline_official_teacher_names_url_and_place(monkeypatch):
    monkeypatch.delenv("SAM_DISTILL_OFFLINE")
    target = checkpoint_cache_dir() / "sam_vit_b_01ec64.pth"

    def no_network(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    with pytest.raises(DistillError) as err:
        load_teacher("sam_vit_b")
    message = str(err.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert str(target) in message
    assert "\n" not in message
    assert not target.with_name(target.name + ".part").exists()


def test_download_checks_sha256(tmp_path, monkeypatch):
    payload = b"not really a checkpoint"
    source = tmp_path / "remote.pth"
    source.write_bytes(payload)
    target = tmp_path / "cache" / "file.pth"
    with pytest.raises(DistillError, match="sha256"):
        download(source.as_uri(), target, "0" * 64)
    assert not target.exists()
    download(source.as_uri(), target, hashlib.sha256(payload).hexdigest())
    assert target.read_bytes() == payload


def test_cached_official_checkpoint_is_used_without_network(tiny_teacher_checkpoint, monkeypatch):
    spec = TEACHERS.get("sam_vit_b")
    cached = checkpoint_cache_dir() / spec.filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(tiny_teacher_checkpoint.read_bytes())
    try:
        assert resolve_official("sam_vit_b") == cached
        # The cached file holds a vit_tiny: the name promises a vit_b, so it is refused.
        with pytest.raises(DistillError, match="expects a vit_b checkpoint"):
            load_teacher("sam_vit_b")
    finally:
        cached.unlink()


def test_local_checkpoint_loads_through_segment_anything_classes(tiny_teacher_checkpoint):
    teacher = load_teacher("vit_tiny", tiny_teacher_checkpoint)
    assert teacher.arch == "vit_tiny" and teacher.image_size == 256 and not teacher.random_init
    assert teacher.checkpoint_sha256 == hashlib.sha256(tiny_teacher_checkpoint.read_bytes()).hexdigest()
    reference = torch.load(tiny_teacher_checkpoint, weights_only=True)
    for key, value in teacher.model.state_dict().items():
        assert torch.equal(value, reference[key])


def test_a_finetuned_sam_with_any_encoder_is_a_teacher(tmp_path):
    """A ``model.pt`` whose encoder is no SAM ViT (a ConvNet SAM trained with ``recipe: finetune``) teaches like an
    official file: same weights, same embeddings; naming another encoder is refused in one line."""
    from sam_distill.sam.build import sam_with_encoder
    from sam_distill.sam.model_file import save_model
    from sam_distill.students import create_student

    torch.manual_seed(0)
    sam = sam_with_encoder(create_student("timm_test_efficientnet", image_size=64), 64).eval()
    path = save_model(sam, tmp_path / "model.pt", "timm_test_efficientnet")
    teacher = load_teacher("timm_test_efficientnet", path)
    assert (teacher.arch, teacher.image_size) == ("timm_test_efficientnet", 64)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher.embed(pixels), sam.image_encoder(pixels))
    with pytest.raises(DistillError, match="expects a vit_tiny checkpoint but .* holds a timm_test_efficientnet"):
        load_teacher("vit_tiny", path)


def test_a_convnet_teacher_runs_at_the_image_size_asked_and_a_vit_teacher_says_it_cannot(
        convnet_sam_file, tiny_teacher_checkpoint):
    """``teacher.image_size`` runs a ConvNet teacher's file at another size (the NWPU teacher trained at 768 px
    scores its best at 1,024, docs/CHAIN.md): same weights, an embedding of that size's grid, the cache stamped
    with that size; a ViT's file names the size it holds instead of being resized."""
    from sam_distill.data.cache import cache_identity

    own = load_teacher("timm_test_efficientnet", convnet_sam_file)
    larger = load_teacher("timm_test_efficientnet", convnet_sam_file, image_size=192)
    assert (own.image_size, larger.image_size) == (128, 192)
    assert larger.checkpoint_sha256 == own.checkpoint_sha256
    for key, value in own.model.state_dict().items():
        assert torch.equal(value, larger.model.state_dict()[key])
    with torch.no_grad():
        assert larger.embed(torch.randn(1, 3, 192, 192)).shape[-2:] == (12, 12)
    stamp = cache_identity(larger, larger.preprocessing)["preprocessing"]
    assert stamp["image_size"] == 192  # a cache made at 128 px is not taken for this one
    assert load_teacher("timm_test_efficientnet", convnet_sam_file, image_size=128).image_size == 128
    with pytest.raises(DistillError, match=r"vit_tiny.pth runs at 256 px only, not 512: .*; leave the teacher's image size unset or set it to 256$"):
        load_teacher("vit_tiny", tiny_teacher_checkpoint, image_size=512)


def test_vit_b_architecture_detected_from_a_real_layout_state_dict(tmp_path):
    model = build_sam("vit_b")
    path = tmp_path / "sam_vit_b.pth"
    torch.save(model.state_dict(), path)
    loaded, arch = load_sam_checkpoint(path)
    assert arch == "vit_b" and loaded.image_encoder.img_size == 1024


def test_yolo_file_is_refused_without_running_its_code(tmp_path):
    from ultralytics.nn.tasks import SegmentationModel

    path = tmp_path / "yolov8n-seg.pt"
    model = SegmentationModel("yolov8n-seg.yaml", verbose=False)
    torch.save({"model": model, "epoch": -1}, path)
    with pytest.raises(DistillError, match="pickled Python objects.*ultralytics"):
        read_state_dict(path)


def test_truncated_checkpoint_is_refused(tiny_teacher_checkpoint, tmp_path):
    path = tmp_path / "truncated.pth"
    data = tiny_teacher_checkpoint.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DistillError, match="truncated or not a PyTorch file"):
        read_state_dict(path)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(DistillError, match="empty"):
        read_state_dict(empty)


def test_state_dict_of_another_model_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict(), path)
    with pytest.raises(DistillError, match="not a SAM checkpoint.*first keys are 0.weight"):
        load_sam_checkpoint(path)


def test_unknown_teacher_name_lists_choices():
    with pytest.raises(DistillError, match="sam_vit_h"):
        load_teacher("sam_vit_xl")
