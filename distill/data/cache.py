"""The teacher embedding cache: each image's SAM embedding, computed once, stored as fp16 shards.

Layout of a cache folder::

    cache.json                 teacher, checkpoint sha256, preprocessing, embedding shape (the identity)
    shards/r000-s00000.npy     N×256×64×64 float16 embeddings
    shards/r000-s00000.<name>.npy  the teacher's other outputs, when its decoder takes more than the embedding
                               (SAM 2: high_res_feats_0 N×32×256×256 and high_res_feats_1 N×64×128×128)
    shards/r000-s00000.json    the N entries of that shard; its presence commits the shard
    skipped-r000.json          files a rank could not read, with the reason
    manifest.jsonl             every entry, merged across ranks (for people and other tools)

An entry is one view of one image: the image itself (``identity``) or, when asked, a flipped or rotated copy
(``hflip``, ``rot90``, ...), each with its own teacher embedding. Views multiply a small data set at the price of
one teacher pass each; overhead imagery has no up, so every orientation is a real sample of it.

A shard's ``.npy`` and then its ``.json`` are each written atomically, so a process killed at any
moment leaves either a committed shard or an orphan ``.npy`` that the next run deletes and redoes.
Each torchrun rank writes only shards named with its own rank.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sam_distill.core.device import DistContext, init_distributed
from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, claim_identity, read_json
from sam_distill.core.images import Preprocessing, UnreadableImage, apply_view, find_images, load_rgb
from sam_distill.data.coco import load_coco, masks_on_input
from sam_distill.sam.teachers import Teacher

CACHE_FORMAT = "sam-distill/embedding-cache/1"


def cache_identity(teacher: Teacher, preprocessing: Preprocessing) -> dict:
    """What must match for two embeddings to be interchangeable."""
    outputs = teacher.outputs
    identity = {
        "format": CACHE_FORMAT,
        "teacher": teacher.identity,
        "preprocessing": preprocessing.as_dict(),
        "embedding_shape": list(outputs["image_embed"]),
        "dtype": "float16",
    }
    extra = {name: list(shape) for name, shape in outputs.items() if name != "image_embed"}
    return {**identity, "extra_outputs": extra} if extra else identity


class _ImageReader(Dataset):
    """Reads, hashes and preprocesses (image, view) pairs in DataLoader workers; failures come back as reasons."""

    def __init__(self, items: list[tuple[Path, str]], preprocessing: Preprocessing):
        self.items = items
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, view = self.items[index]
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            image = apply_view(load_rgb(path), view)
        except (UnreadableImage, OSError) as err:
            return {"path": str(path), "view": view, "error": str(err)}
        return {"path": str(path), "view": view, "sha256": digest, "orig_size": list(image.shape[:2]),
                "tensor": self.preprocessing(image)}


def _collate(batch):
    return batch


class _ShardWriter:
    def __init__(self, shard_dir: Path, rank: int, shard_size: int):
        self.shard_dir = shard_dir
        self.rank = rank
        self.shard_size = shard_size
        existing = sorted(shard_dir.glob(f"r{rank:03d}-s*.json"))
        self.next_seq = 1 + max((int(p.stem.split("-s")[1]) for p in existing), default=-1)
        self.outputs: list[dict[str, np.ndarray]] = []
        self.entries: list[dict] = []

    def add(self, outputs: dict[str, np.ndarray], entry: dict) -> None:
        self.outputs.append(outputs)
        self.entries.append(entry)
        if len(self.entries) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.entries:
            return
        stem = f"r{self.rank:03d}-s{self.next_seq:05d}"
        for name in self.outputs[0]:
            array = np.stack([outputs[name] for outputs in self.outputs]).astype(np.float16)
            atomic_write_bytes(self.shard_dir / shard_file(stem, name), _npy_bytes(array))
        entries = [dict(entry, shard=stem, row=row) for row, entry in enumerate(self.entries)]
        atomic_write_json(self.shard_dir / f"{stem}.json", {"shard": f"{stem}.npy", "entries": entries})
        self.next_seq += 1
        self.outputs, self.entries = [], []


def shard_file(stem: str, output: str) -> str:
    """The image embedding keeps the plain ``<stem>.npy`` name (caches of SAM teachers read as before)."""
    return f"{stem}.npy" if output == "image_embed" else f"{stem}.{output}.npy"


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _clean_orphans(shard_dir: Path, rank: int) -> None:
    """Delete what a killed run of this rank left half-done: temp files and shards never committed."""
    for tmp in shard_dir.glob(f".r{rank:03d}-*.tmp"):
        tmp.unlink(missing_ok=True)
    for npy in shard_dir.glob(f"r{rank:03d}-s*.npy"):
        if not (shard_dir / f"{npy.name.split('.')[0]}.json").exists():
            npy.unlink()


def view_of(entry: dict) -> str:
    return entry.get("view", "identity")  # caches written before views existed hold the images themselves


def read_entries(cache_dir: Path) -> list[dict]:
    """All committed entries, in shard order, first occurrence of each (content hash, view) only."""
    seen: set[tuple[str, str]] = set()
    entries = []
    for index_file in sorted((Path(cache_dir) / "shards").glob("r*-s*.json")):
        for entry in read_json(index_file)["entries"]:
            key = (entry["sha256"], view_of(entry))
            if key in seen:
                continue
            seen.add(key)
            entries.append(entry)
    return entries


def write_manifest(cache_dir: Path) -> list[dict]:
    entries = read_entries(cache_dir)
    atomic_write_text(cache_dir / "manifest.jsonl", "".join(json.dumps(e) + "\n" for e in entries))
    return entries


def build_cache(
    teacher: Teacher,
    images: Path | list[Path],
    cache_dir: Path,
    shard_size: int = 16,
    batch_size: int = 1,
    num_workers: int = 0,
    context: DistContext | None = None,
    log=print,
    views: tuple[str, ...] = ("identity",),
) -> dict:
    """Embed every view of every image not yet in the cache. Safe to kill and rerun; splits across torchrun
    ranks. Adding a view later embeds only that view."""
    context = context or init_distributed()
    cache_dir = Path(cache_dir)
    preprocessing = teacher.preprocessing
    shard_dir = cache_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    if context.is_main:
        claim_identity(cache_dir / "cache.json", cache_identity(teacher, preprocessing), f"cache {cache_dir}")
    context.barrier()
    claim_identity(cache_dir / "cache.json", cache_identity(teacher, preprocessing), f"cache {cache_dir}")
    _clean_orphans(shard_dir, context.rank)

    paths = find_images(images) if isinstance(images, (str, Path)) else sorted(Path(p) for p in images)
    done = read_entries(cache_dir)
    done_sources = {(entry["source"], view_of(entry)) for entry in done}
    done_hashes = {(entry["sha256"], view_of(entry)) for entry in done}
    wanted = [(p.resolve(), view) for p in paths for view in views]
    pending = [(p, view) for p, view in wanted if (str(p), view) not in done_sources]
    mine = pending[context.rank :: context.world_size]
    if context.is_main:
        counted = f"{len(paths)} images" + (f" × {len(views)} views ({', '.join(views)})" if len(views) > 1 else "")
        log(f"embed: {counted}, {len(wanted) - len(pending)} already cached, {len(pending)} to do "
            f"on {context.world_size} process(es); teacher {teacher.describe()}")

    teacher.to(context.device).model.eval()
    writer = _ShardWriter(shard_dir, context.rank, shard_size)
    loader = DataLoader(_ImageReader(mine, preprocessing), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate)
    skipped, duplicates, started = [], 0, time.time()
    with tqdm(total=len(mine), desc="embed", unit="img", disable=not context.is_main) as bar:
        for batch in loader:
            good = []
            for item in batch:
                if "error" in item:
                    skipped.append({"path": item["path"], "reason": item["error"]})
                    log(f"embed: skipped {item['path']}: {item['error']}")
                elif (item["sha256"], item["view"]) in done_hashes:
                    duplicates += 1
                else:
                    done_hashes.add((item["sha256"], item["view"]))
                    good.append(item)
            if good:
                outputs = teacher.embed_outputs(torch.stack([item["tensor"] for item in good]))
                outputs = {name: value.float().cpu().numpy() for name, value in outputs.items()}
                for row, item in enumerate(good):
                    writer.add({name: value[row] for name, value in outputs.items()},
                               {"source": item["path"], "sha256": item["sha256"],
                                "orig_size": item["orig_size"], "view": item["view"]})
            bar.update(len(batch))
    writer.flush()
    atomic_write_json(cache_dir / f"skipped-r{context.rank:03d}.json", skipped)
    context.barrier()
    entries = write_manifest(cache_dir) if context.is_main else read_entries(cache_dir)
    all_skipped = [s for f in sorted(cache_dir.glob("skipped-r*.json")) for s in read_json(f)]
    summary = {"cached": len(entries), "new": len(mine) - len(skipped) - duplicates, "skipped": all_skipped,
               "duplicates": duplicates, "seconds": round(time.time() - started, 2)}
    if context.is_main:
        log(f"embed: cache {cache_dir} holds {len(entries)} embeddings ({len(all_skipped)} files skipped)")
    return summary


class EmbeddingCache:
    """Read side of the cache: entries, identity, and embeddings by index (memory-mapped shards)."""

    def __init__(self, cache_dir: Path | str):
        self.dir = Path(cache_dir)
        header = self.dir / "cache.json"
        if not header.exists():
            raise DistillError(f"{self.dir} is not an embedding cache (no cache.json); build it with `distill embed`")
        self.identity = read_json(header)
        self.entries = read_entries(self.dir)
        if not self.entries:
            raise DistillError(f"embedding cache {self.dir} is empty; run `distill embed` first")
        self.outputs = ("image_embed", *self.identity.get("extra_outputs", {}))
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def image_size(self) -> int:
        return int(self.identity["preprocessing"]["image_size"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.identity["preprocessing"])

    def embedding(self, index: int, output: str = "image_embed") -> torch.Tensor:
        entry = self.entries[index]
        name = shard_file(entry["shard"], output)
        shard = self._shards.get(name)
        if shard is None:
            shard = np.load(self.dir / "shards" / name, mmap_mode="r")
            self._shards[name] = shard
        return torch.from_numpy(np.array(shard[entry["row"]], dtype=np.float32))

    def targets(self, index: int) -> torch.Tensor | dict[str, torch.Tensor]:
        """What a student learns to reproduce for one entry: the embedding, or every output by name when the
        teacher has more than one."""
        if len(self.outputs) == 1:
            return self.embedding(index)
        return {name: self.embedding(index, name) for name in self.outputs}

    def split(self, holdout_fraction: float, max_holdout: int | None = None) -> tuple[list[int], list[int]]:
        """A split of the images by content hash: stable across runs and machines, at least one held-out image.
        Training takes every view of its images; the held-out side only the images themselves (the identity
        view), so no flipped copy of a held-out image is ever trained on."""
        hashes = sorted({entry["sha256"] for entry in self.entries})
        everything = sorted(range(len(self.entries)))
        if holdout_fraction <= 0 or len(hashes) < 2:
            return everything, []
        count = max(1, round(len(hashes) * holdout_fraction))
        if max_holdout:
            count = min(count, max_holdout)
        held_out = set(hashes[: min(count, len(hashes) - 1)])
        train = [i for i in everything if self.entries[i]["sha256"] not in held_out]
        holdout = [i for i in everything if self.entries[i]["sha256"] in held_out and view_of(self.entries[i]) == "identity"]
        return train, holdout


class DistillDataset(Dataset):
    """(preprocessed image, teacher embedding) pairs for decoupled distillation."""

    def __init__(self, cache: EmbeddingCache, indices: list[int] | None = None):
        self.cache = cache
        self.indices = list(range(len(cache))) if indices is None else list(indices)
        self.preprocessing = cache.preprocessing

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        source = self.cache.entries[index]["source"]
        try:
            image = apply_view(load_rgb(source), view_of(self.cache.entries[index]))
        except (UnreadableImage, OSError) as err:
            raise DistillError(f"cached image {source} can no longer be read ({err}); restore it or rebuild the cache") from None
        return self.preprocessing(image), self.cache.targets(index)


class AnnotatedDistillDataset(DistillDataset):
    """(preprocessed image, teacher outputs, instance masks) triples: each cached view of an image with the COCO
    instances of ``annotations`` turned the same way and brought to the model input (n×S×S bool). EdgeSAM draws
    its prompt-in-the-loop prompts from the data set's ground-truth masks; these masks are what it draws from.
    The teacher's masks stay the targets; the annotations only choose where to ask."""

    def __init__(self, cache: EmbeddingCache, annotations: Path, images: Path, indices: list[int] | None = None):
        super().__init__(cache, indices)
        self.coco = load_coco(annotations)
        by_path = {str((Path(images) / info["file_name"]).resolve()): image_id
                   for image_id, info in self.coco.imgs.items()}
        self.image_ids = [by_path.get(self.cache.entries[index]["source"]) for index in self.indices]
        if all(image_id is None for image_id in self.image_ids):
            raise DistillError(f"no cached image is named in {annotations}; the cache was built from other images "
                               f"than data.images {images}, or set prompt_stage.prompts: random")

    def __getitem__(self, i: int):
        image, targets = super().__getitem__(i)
        image_id = self.image_ids[i]
        anns = [] if image_id is None else [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        size = self.preprocessing.image_size
        if not anns:
            return image, targets, torch.zeros((0, size, size), dtype=torch.bool)
        # H×W×n, so a view turns the masks exactly as it turned the image
        masks = apply_view(np.stack([self.coco.annToMask(a) for a in anns], -1),
                           view_of(self.cache.entries[self.indices[i]]))
        height, width = masks.shape[:2]
        input_hw = (size, size) if self.preprocessing.resize_mode == "square" else \
            ResizeLongestSide.get_preprocess_shape(height, width, size)
        placed = masks_on_input(torch.from_numpy(np.ascontiguousarray(masks)).permute(2, 0, 1), input_hw, size) > 0.5
        return image, targets, placed[placed.flatten(1).any(1)]
