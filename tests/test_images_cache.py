import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sam_distill.core.device import DistContext
from sam_distill.core.errors import DistillError
from sam_distill.core.images import Preprocessing, UnreadableImage, find_images, load_rgb
from sam_distill.data.cache import EmbeddingCache, build_cache, read_entries
from sam_distill.sam.teachers import load_teacher

quiet = dict(context=DistContext(), log=lambda m: None)


def _huge_png(path, width=100_000, height=100_000):
    """A valid PNG header that declares a 10-gigapixel image (PIL refuses it before decoding)."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_odd_images_are_converted_to_rgb8(tmp_path):
    Image.fromarray(np.full((5, 7), 100, np.uint8), "L").save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((5, 7, 4), np.uint8), "RGBA").save(tmp_path / "rgba.png")
    sixteen = (np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000)
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    Image.new("RGB", (1, 1), (9, 8, 7)).save(tmp_path / "one.jpg")
    for name in ("gray.png", "rgba.png", "sixteen.png"):
        image = load_rgb(tmp_path / name)
        assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    sixteen_rgb = load_rgb(tmp_path / "sixteen.png")
    assert sixteen_rgb[0, 0, 0] == 0 and sixteen_rgb[-1, -1, 0] == 255  # rescaled by its own range
    assert load_rgb(tmp_path / "one.jpg").shape == (1, 1, 3)


def test_unreadable_images_give_reasons(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    _huge_png(tmp_path / "huge.png")
    with pytest.raises(UnreadableImage, match="empty file"):
        load_rgb(tmp_path / "zero.jpg")
    with pytest.raises(UnreadableImage):
        load_rgb(tmp_path / "corrupt.png")
    with pytest.raises(UnreadableImage, match="too large.*tile"):
        load_rgb(tmp_path / "huge.png")


def test_find_images_errors(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        find_images(tmp_path / "nope")
    with pytest.raises(DistillError, match="holds no images"):
        find_images(tmp_path)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "x.TIF")
    assert [p.name for p in find_images(tmp_path)] == ["x.TIF"]


def test_preprocessing_is_sams(tiny_teacher, image_folder):
    image = load_rgb(find_images(image_folder)[0])
    pre = Preprocessing(256)
    resized = torch.as_tensor(pre.resize(image)).permute(2, 0, 1)[None].float()
    assert torch.equal(pre(image), tiny_teacher.model.preprocess(resized)[0])
    assert max(pre.resize(image).shape[:2]) == 256


def test_cache_contents_manifest_and_skips(tiny_teacher, image_folder, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in find_images(image_folder)[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zero.png").write_bytes(b"")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")
    summary = build_cache(tiny_teacher, folder, tmp_path / "cache", shard_size=2, **quiet)
    assert [s["path"].endswith("zero.png") for s in summary["skipped"]] == [True]
    cache = EmbeddingCache(tmp_path / "cache")
    assert len(cache) == 4
    manifest = [json.loads(line) for line in (tmp_path / "cache" / "manifest.jsonl").read_text().splitlines()]
    assert {m["source"] for m in manifest} == {e["source"] for e in cache.entries}
    entry = next(e for e in cache.entries if e["source"].endswith("dot.png"))
    assert entry["orig_size"] == [1, 1] and len(entry["sha256"]) == 64
    header = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert header["teacher"]["checkpoint_sha256"] == tiny_teacher.checkpoint_sha256
    assert header["preprocessing"]["image_size"] == 256
    # Stored embeddings are the teacher's, in fp16.
    index = cache.entries.index(entry)
    pixels = cache.preprocessing(load_rgb(entry["source"]))[None]
    with torch.no_grad():
        expected = tiny_teacher.model.image_encoder(pixels)[0]
    assert torch.allclose(cache.embedding(index), expected.half().float(), atol=1e-2)


def test_cache_refuses_another_teacher(tiny_cache, image_folder):
    other = load_teacher("vit_tiny", random_init=True, image_size=256, seed=5)
    with pytest.raises(DistillError, match="was built with teacher"):
        build_cache(other, image_folder, tiny_cache, **quiet)


def test_split_is_stable_and_disjoint(tiny_cache):
    cache = EmbeddingCache(tiny_cache)
    train, holdout = cache.split(0.34)
    assert (train, holdout) == EmbeddingCache(tiny_cache).split(0.34)
    assert len(holdout) == 2 and not set(train) & set(holdout) and len(train) + len(holdout) == len(cache)


@pytest.fixture(scope="module")
def slow_teacher(tmp_path_factory):
    """vit_tiny at 1024 px: slow enough (about 1 s an image) to be killed mid-run."""
    teacher = load_teacher("vit_tiny", random_init=True, image_size=1024, seed=3)
    path = tmp_path_factory.mktemp("slow") / "vit_tiny_1024.pth"
    torch.save(teacher.model.state_dict(), path)
    return path


def _embed_cmd(images, out, checkpoint, shard_size=1):
    return [sys.executable, "-m", "sam_distill", "embed", str(images), "--out", str(out), "--teacher", "vit_tiny",
            "--checkpoint", str(checkpoint), "--shard-size", str(shard_size), "--device", "cpu"]


def test_embed_survives_kill_9_and_resumes(slow_teacher, image_folder, tmp_path):
    out = tmp_path / "cache"
    process = subprocess.Popen(_embed_cmd(image_folder, out, slow_teacher), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "shards").glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = len(read_entries(out))
    assert 2 <= committed < 6, "the kill should land mid-run"
    subprocess.run(_embed_cmd(image_folder, out, slow_teacher), check=True, capture_output=True)
    entries = read_entries(out)
    assert sorted(e["source"] for e in entries) == sorted(str(p.resolve()) for p in find_images(image_folder))
    shard_files = list((out / "shards").iterdir())
    assert not [p for p in shard_files if p.suffix == ".tmp" or p.name.startswith(".")]
    assert all(p.with_suffix(".json").exists() for p in shard_files if p.suffix == ".npy")
    cache = EmbeddingCache(out)
    for i in range(len(cache)):
        assert torch.isfinite(cache.embedding(i)).all()


def test_embed_splits_across_torchrun_ranks(tiny_teacher_checkpoint, image_folder, tmp_path):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "sam_distill", "embed", str(image_folder), "--out", str(out), "--teacher", "vit_tiny",
               "--checkpoint", str(tiny_teacher_checkpoint), "--shard-size", "2", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, capture_output=True, env=env, timeout=180)
    names = sorted(p.name for p in (out / "shards").glob("*.json"))
    assert {n[:4] for n in names} == {"r000", "r001"}
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 6 == len({json.loads(line)["source"] for line in manifest})


def test_data_annotations_split_keeps_the_instance_validation_images_out(tmp_path):
    """``data.annotations`` + ``data.split: train`` gives a distillation exactly the training side of the instance
    recipes' split (disjoint from, and together covering, its validation side); a missing image is named."""
    from sam_distill.data.coco import hash_split, make_synthetic_coco
    from sam_distill.methods.inputs import split_images

    annotations = make_synthetic_coco(tmp_path, 12, 32, seed=0)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    train_pos, val_pos = hash_split(names, 0.3)
    assert train_pos and val_pos
    train = split_images(tmp_path / "images", annotations, "train", 0.3)
    val = split_images(tmp_path / "images", annotations, "val", 0.3)
    assert sorted(p.name for p in train) == [names[i] for i in train_pos]
    assert sorted(p.name for p in val) == [names[i] for i in val_pos]
    assert len(split_images(tmp_path / "images", annotations, "all", 0.3)) == 12
    (tmp_path / "images" / names[train_pos[0]]).unlink()
    with pytest.raises(DistillError, match=f"names 1 image.*e.g. {names[train_pos[0]]}.*data.images"):
        split_images(tmp_path / "images", annotations, "train", 0.3)


def test_views_embed_flipped_copies_and_never_leak_a_held_out_image(tiny_teacher, image_folder, tmp_path):
    """``cache.views`` adds one teacher embedding per flipped/rotated copy; the student's sample is that same copy;
    the split keeps every view of an image on one side and holds out the image itself only; adding a view later
    embeds only the new view."""
    from sam_distill.core.images import apply_view
    from sam_distill.data.cache import DistillDataset

    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in find_images(image_folder)[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    build_cache(tiny_teacher, folder, tmp_path / "cache", views=("identity", "hflip"), **quiet)
    summary = build_cache(tiny_teacher, folder, tmp_path / "cache", views=("identity", "hflip", "rot90"), **quiet)
    assert summary["new"] == 4  # only the rot90 copies
    cache = EmbeddingCache(tmp_path / "cache")
    assert len(cache) == 12 and sorted(e.get("view") for e in cache.entries).count("rot90") == 4
    index = next(i for i, e in enumerate(cache.entries) if e["view"] == "rot90")
    entry = cache.entries[index]
    rotated = apply_view(load_rgb(entry["source"]), "rot90")
    assert np.array_equal(rotated[0, :, 0], load_rgb(entry["source"])[:, -1, 0])  # counter-clockwise
    pixels, embedding = DistillDataset(cache, [index])[0]
    assert torch.equal(pixels, cache.preprocessing(rotated))
    with torch.no_grad():
        expected = tiny_teacher.model.image_encoder(pixels[None])[0]
    assert torch.allclose(embedding, expected.half().float(), atol=1e-2)
    assert not torch.allclose(embedding, cache.embedding(cache.entries.index(
        next(e for e in cache.entries if e["source"] == entry["source"] and e["view"] == "identity"))), atol=1e-2)
    train, holdout = cache.split(0.5)
    held = {cache.entries[i]["sha256"] for i in holdout}
    assert len(held) == 2 and {cache.entries[i]["view"] for i in holdout} == {"identity"}
    assert not held & {cache.entries[i]["sha256"] for i in train} and len(train) == 6


def test_views_config_always_starts_with_the_image_itself():
    from sam_distill.methods.sections import CacheConfig

    assert CacheConfig(views=["rot90", "hflip", "rot90"]).views == ["identity", "rot90", "hflip"]
    with pytest.raises(Exception, match="rot45"):
        CacheConfig(views=["rot45"])
