"""Speed and size of heavy and light SAMs, measured the same way for every model file.

One row per model: parameters, GFLOPs (counted by ``torch.utils.flop_counter``), file size, peak
memory, and latency p50/p90 after warm-up for the image encoder, the prompt decoder (one point
prompt through prompt encoder + mask decoder on a fixed embedding) and both together.

Model kinds, told apart by the file itself:

* ``sam-distill`` (our ``model.pt``), ``mobilesam`` (a bare MobileSAM state dict), ``sam`` (an official
  SAM ``.pth``): loaded with ``assemble.load_model`` and timed in PyTorch eager.
* a teacher name with ``random_init=True`` (``sam_vit_b``): the architecture with random weights;
  latency does not depend on the weights, so it is labelled ``random-init`` and still meaningful.
* ``.onnx``: onnxruntime on CPU. An input named ``image`` makes it an encoder, ``image_embeddings`` a
  decoder with segment-anything's ``SamOnnxModel`` interface; INT8 graphs are labelled ``onnx-int8``.
* an ultralytics ``.pt`` (YOLO-seg / FastSAM): the network's forward at its image size is the whole
  automatic pipeline, reported as the encoder (no prompt decoder).

Anything else raises a one-line ``DistillError``; ``bench_many`` turns it into a skipped line.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sam_distill.core.errors import DistillError

ROLE_TEACHER, ROLE_STUDENT = "teacher", "student"
PHASES = ("encoder", "decoder", "total")


# ---------------------------------------------------------------------------------------------
# Measurement primitives


def latency_stats(samples_s: list[float]) -> dict:
    """p50/p90/mean in milliseconds of per-run wall times given in seconds."""
    if not samples_s:
        raise ValueError("no latency samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "runs": int(ms.size)}


def time_runs(fn: Callable[[], object], runs: int, warmup: int, device: str = "cpu") -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls; CUDA calls timed with events."""
    for _ in range(warmup):
        fn()
    samples = []
    cuda = device.startswith("cuda")
    for _ in range(runs):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1000.0)
        else:
            began = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - began)
    return samples


def count_gflops(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call (a multiply-add counts as 2), in GFLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> tuple[float, str]:
    """Peak memory of one call in MiB, and how it was measured."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20, "cuda max_memory_allocated above the loaded model"
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return (peak[0] - before) / 2**20, "cpu RSS rise during one call (psutil, sampled every 1 ms)"


# ---------------------------------------------------------------------------------------------
# Models under test


@dataclass
class BenchModel:
    """What ``bench_model`` needs: callables per phase, and what to say about the model."""
    name: str
    kind: str
    format: str
    role: str
    path: Path | None
    params: int
    image_size: int
    encoder: Callable[[], object] | None = None
    decoder: Callable[[], object] | None = None
    notes: list[str] = field(default_factory=list)
    sam: object = None  # the segment-anything Sam, for fidelity

    def total(self) -> Callable[[], object] | None:
        parts = [p for p in (self.encoder, self.decoder) if p is not None]
        if not parts:
            return None
        return lambda: [part() for part in parts]


def _sam_callables(sam, device: str) -> tuple[Callable, Callable]:
    from sam_distill.sam.prompts import decode

    size = int(sam.image_encoder.img_size)
    pixels = torch.randn(1, 3, size, size, device=device)
    embedding = torch.randn(1, 256, size // 16, size // 16, device=device)
    point = (torch.tensor([[[size / 2, size / 2]]], device=device), torch.ones(1, 1, device=device))

    @torch.inference_mode()
    def encoder():
        return sam.image_encoder(pixels)

    @torch.inference_mode()
    def decoder():
        return decode(sam, embedding, points=point, multimask=True)

    return encoder, decoder


def _from_sam(sam, name: str, kind: str, role: str, path: Path | None, device: str, notes=()) -> BenchModel:
    sam = sam.to(device).eval()
    encoder, decoder = _sam_callables(sam, device)
    return BenchModel(name=name, kind=kind, format="pytorch", role=role, path=path,
                      params=sum(p.numel() for p in sam.parameters()), image_size=int(sam.image_encoder.img_size),
                      encoder=encoder, decoder=decoder, notes=list(notes), sam=sam)


def _probe(path: Path) -> tuple[str | None, str]:
    """(our ``format`` key or "", error text) from a safe, tensor-free (mmap) load of a torch file."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        return None, str(err)
    return (payload.get("format", "") if isinstance(payload, dict) else ""), ""


def _load_torch_file(path: Path, device: str) -> BenchModel:
    from sam_distill.methods.prompter.model import PROMPTER_FORMAT
    from sam_distill.methods.rcnn.model import RCNN_FORMAT
    from sam_distill.methods.sam_cls.model import SAM_CLS_FORMAT
    from sam_distill.sam.model_file import MODEL_FORMAT, load_model

    fmt, error = _probe(path)
    if fmt is None and "ultralytics" in error:  # ultralytics pickles its classes; the safe loader names them
        return _load_ultralytics(path, device)
    if fmt == PROMPTER_FORMAT:
        return _load_prompter(path, device)
    if fmt == RCNN_FORMAT:
        return _load_rcnn(path, device)
    if fmt == SAM_CLS_FORMAT:
        return _load_sam_cls(path, device)
    sam, info = load_model(path)  # raises one line for anything that is not a SAM checkpoint
    if fmt == MODEL_FORMAT:
        return _from_sam(sam, f"{info.student} ({path.name})", "sam-distill", ROLE_STUDENT, path, device)
    if info.student == "tinyvit_5m":
        return _from_sam(sam, f"mobilesam ({path.name})", "mobilesam", ROLE_STUDENT, path, device)
    return _from_sam(sam, f"{info.student} ({path.name})", "sam", ROLE_TEACHER, path, device)


def _load_prompter(path: Path, device: str) -> BenchModel:
    """An RSPrompter model: encoder + head (prompts) timed as the encoder phase, SAM's decoder on its prompts as the decoder."""
    from sam_distill.methods.prompter.model import load_prompter

    model, _ = load_prompter(path)
    model = model.to(device).eval().requires_grad_(False)  # inference only; the FLOP counter hooks grads otherwise
    size = int(model.image_size)
    pixels = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        embedding, prompts = _prompter_prompts(model, pixels)

    @torch.no_grad()
    def encoder_and_head():
        return _prompter_prompts(model, pixels)

    @torch.no_grad()
    def decoder():
        return model.decode(embedding, prompts)

    return BenchModel(name=f"{model.config['head']} prompter ({path.name})", kind="rsprompter", format="pytorch",
                      role=ROLE_STUDENT, path=path, params=sum(p.numel() for p in model.parameters()), image_size=size,
                      encoder=encoder_and_head, decoder=decoder,
                      notes=[f"encoder + {model.config['head']} head as 'encoder'; SAM's decoder on "
                             f"{prompts.shape[0]} prompt set(s) as 'decoder'"])


def _load_rcnn(path: Path, device: str) -> BenchModel:
    """SAM-det / SAM-seg: the image encoder as 'encoder'; pyramid + R-CNN heads (+ SAM's decoder on each
    detected box, for SAM-det) as 'decoder'."""
    from sam_distill.methods.rcnn.model import DISPLAY_NAMES, load_rcnn

    model, _ = load_rcnn(path)
    model = model.to(device).eval().requires_grad_(False)
    size = int(model.image_size)
    pixels = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        embedding = model.encoder(pixels)
        boxes = len(model.predict_from_embeddings(embedding)[0]["boxes"])

    @torch.no_grad()
    def encoder():
        return model.encoder(pixels)

    @torch.no_grad()
    def decoder():
        return model.predict_from_embeddings(embedding)

    method = DISPLAY_NAMES[model.method]
    masks = "SAM's decoder on each box" if model.sam_masks else "Mask R-CNN's mask head"
    return BenchModel(name=f"{method} ({path.name})", kind=model.method, format="pytorch", role=ROLE_STUDENT,
                      path=path, params=sum(p.numel() for p in model.parameters()), image_size=size,
                      encoder=encoder, decoder=decoder,
                      notes=[f"'decoder' = pyramid + R-CNN heads + {masks} ({boxes} detections on a random input)"])


def _load_sam_cls(path: Path, device: str) -> BenchModel:
    """A SAM-cls model: the image encoder as 'encoder'; everything mode's point-grid decoding plus the mask
    classifier as 'decoder' (the generator's thresholds, NMS and RLE encoding are bookkeeping, not timed)."""
    from sam_distill.methods.sam_cls.model import load_sam_cls

    model = load_sam_cls(path).to(device)
    model.sam.requires_grad_(False)
    size, settings = model.image_size, model.config["generator"]
    pixels = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        embedding = model.embed(pixels[0])

    @torch.no_grad()
    def encoder():
        return model.sam.image_encoder(pixels)

    def decoder():
        return model.decode_and_classify(embedding)

    classify = ("+ pooled-feature MLP on each point's mask" if model.classifier is not None
                else "(CLIP crop classification needs the CLIP checkpoint: not timed)")
    return BenchModel(name=f"SAM-cls {model.config['classifier']} ({path.name})", kind="sam_cls", format="pytorch",
                      role=ROLE_STUDENT, path=path, params=sum(p.numel() for p in model.sam.parameters()) + sum(
                          p.numel() for p in (model.classifier.parameters() if model.classifier is not None else [])),
                      image_size=size, encoder=encoder, decoder=decoder, sam=model.sam,
                      notes=[f"image encoder as 'encoder'; everything mode's {settings['points_per_side']}² point grid "
                             f"through SAM's decoder ({settings['points_per_batch']} points a batch) {classify} as "
                             f"'decoder'"])


def _prompter_prompts(model, pixels: torch.Tensor):
    """The image embedding and the prompt embeddings the head emits for one image."""
    from sam_distill.methods.prompter.onnx import AnchorHeadGraph, QueryHeadGraph

    embedding, taps = model.encoder(pixels)
    head = QueryHeadGraph(model) if model.config["head"] == "query" else AnchorHeadGraph(model)
    prompts = head(*taps)[-1]
    return embedding, prompts[0] if model.config["head"] == "query" else prompts


def _load_ultralytics(path: Path, device: str) -> BenchModel:
    # Ultralytics .pt files are pickled classes: the one exception to weights_only loading.
    from ultralytics import YOLO

    yolo = YOLO(str(path))
    net = yolo.model.to(device).eval()
    args = getattr(net, "args", None)
    size = int(args.get("imgsz", 640)) if isinstance(args, dict) else 640
    pixels = torch.rand(1, 3, size, size, device=device)

    @torch.inference_mode()
    def forward():
        return net(pixels)

    return BenchModel(name=f"{path.stem} ({path.name})", kind="ultralytics", format="pytorch", role=ROLE_STUDENT,
                      path=path, params=sum(p.numel() for p in net.parameters()), image_size=size, encoder=forward,
                      notes=[f"ultralytics {yolo.task} network forward at {size} px (no NMS/post-processing)"])


def _onnx_feeds(session, image_size: int) -> tuple[str, dict]:
    """Dummy inputs for a SAM encoder or SamOnnxModel decoder graph; which of the two it is."""
    names = {i.name: i for i in session.get_inputs()}

    def dims(name, fallback):
        shape = names[name].shape
        return [d if isinstance(d, int) else f for d, f in zip(shape, fallback)] if len(shape) == len(fallback) else fallback

    if "image" in names:
        shape = dims("image", [1, 3, image_size, image_size])
        return "encoder", {"image": np.random.rand(*shape).astype(np.float32)}
    if "image_embeddings" in names:
        emb = dims("image_embeddings", [1, 256, image_size // 16, image_size // 16])
        side = emb[-1] * 16
        # One positive point plus SamOnnxModel's padding point (label -1), as SamPredictor sends it.
        feeds = {"image_embeddings": np.random.rand(*emb).astype(np.float32),
                 "point_coords": np.array([[[side / 2, side / 2], [0.0, 0.0]]], dtype=np.float32),
                 "point_labels": np.array([[1, -1]], dtype=np.float32),
                 "mask_input": np.zeros((1, 1, emb[-2] * 4, emb[-1] * 4), dtype=np.float32),
                 "has_mask_input": np.zeros(1, dtype=np.float32),
                 "orig_im_size": np.array([side, side], dtype=np.float32)}
        missing = set(names) - set(feeds)
        if missing:
            raise DistillError(f"decoder graph has inputs {sorted(missing)} beyond SamOnnxModel's; export it with SamOnnxModel")
        return "decoder", {k: v for k, v in feeds.items() if k in names}
    raise DistillError(f"ONNX inputs {sorted(names)} are neither a SAM encoder ('image') nor a SamOnnxModel decoder "
                       f"('image_embeddings'); export with `distill export`")


def _load_onnx(path: Path, threads: int, image_size: int) -> BenchModel:
    import onnx
    import onnxruntime as ort

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise DistillError(f"model {path} is not a readable ONNX file ({str(err).splitlines()[0][:120]})") from None
    params = sum(int(np.prod(t.dims)) for t in graph.graph.initializer)
    quantised = any(node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "MatMulInteger",
                                     "ConvInteger") for node in graph.graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    part, feeds = _onnx_feeds(session, image_size)

    def run():
        return session.run(None, feeds)

    fmt = "onnx-int8" if quantised else "onnx-fp32"
    model = BenchModel(name=f"{path.stem} ({path.name})", kind=f"onnx-{part}", format=fmt, role=ROLE_STUDENT,
                       path=path, params=params, image_size=image_size,
                       notes=[f"onnxruntime {ort.__version__} CPU, {threads} intra-op threads; GFLOPs not counted"])
    setattr(model, part, run)
    return model


def load_bench_model(spec: str, device: str = "cpu", threads: int = 1, random_init: bool = False,
                     image_size: int = 1024) -> BenchModel:
    """A model file or (with ``random_init``) a teacher name, ready to be timed."""
    path = Path(spec)
    if random_init and not path.exists():
        from sam_distill.sam.teachers import load_teacher

        teacher = load_teacher(spec, random_init=True, image_size=image_size)
        return _from_sam(teacher.model, f"{spec} (random-init)", "random-init", ROLE_TEACHER, None, device,
                         [f"{teacher.arch} with RANDOM weights: latency/size are the architecture's, no accuracy"])
    if not path.is_file():
        raise DistillError(f"model {spec} does not exist; give a model file, or a teacher name with --random-init")
    if path.suffix == ".onnx":
        if device != "cpu":
            raise DistillError(f"model {path}: ONNX models are timed on CPU only; drop --device {device}")
        return _load_onnx(path, threads, image_size)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _load_torch_file(path, device)
    raise DistillError(f"model {path} is of an unknown kind ({path.suffix or 'no suffix'}); "
                       f"give a .pt/.pth checkpoint, an ultralytics .pt or an .onnx file")


# ---------------------------------------------------------------------------------------------
# Rows


def bench_model(model: BenchModel, runs: int = 10, warmup: int = 2, device: str = "cpu", threads: int = 1,
                count_flops: bool = True) -> dict:
    """One result row (plain data, JSON-ready)."""
    row = {"model": model.name, "kind": model.kind, "format": model.format, "role": model.role,
           "path": str(model.path) if model.path else None, "source": "measured",
           "params": model.params, "image_size": model.image_size,
           "file_mb": model.path.stat().st_size / 2**20 if model.path else None,
           "device": device, "threads": threads if device == "cpu" else None, "runs": runs, "warmup": warmup,
           "notes": list(model.notes)}
    phases = {"encoder": model.encoder, "decoder": model.decoder, "total": model.total()}
    for phase, fn in phases.items():
        if fn is None:
            continue
        stats = latency_stats(time_runs(fn, runs, warmup, device))
        row[f"{phase}_p50_ms"], row[f"{phase}_p90_ms"] = stats["p50_ms"], stats["p90_ms"]
    if count_flops and model.format == "pytorch":
        for phase in ("encoder", "decoder"):
            if phases[phase] is not None:
                row[f"{phase}_gflops"] = count_gflops(phases[phase])
        row["gflops"] = sum(row.get(f"{p}_gflops", 0.0) for p in ("encoder", "decoder"))
    if phases["total"] is not None:
        row["peak_mem_mb"], row["peak_mem_method"] = peak_memory(phases["total"], device)
    return row


def add_fidelity(row: dict, model: BenchModel, teacher: BenchModel, cache_dir: Path, max_images: int = 20,
                 points: int = 4, device: str = "cpu") -> None:
    """Fidelity to the teacher (mIoU point/box, embedding cosine) on the cache's held-out images."""
    from sam_distill.data.cache import EmbeddingCache
    from sam_distill.eval.fidelity import fidelity

    if model.sam is None or teacher.sam is None:
        row["notes"].append("fidelity needs PyTorch SAM models (teacher and student); not computed")
        return
    cache = EmbeddingCache(cache_dir)
    _, holdout = cache.split(0.1)
    indices = (holdout or list(range(len(cache))))[:max_images]
    summary = fidelity(teacher.sam, model.sam, cache, indices, points, device=device)["summary"]
    row.update({"point_miou": summary["point_miou"], "box_miou": summary["box_miou"],
                "embedding_cosine": summary["embedding_cosine"], "fidelity_images": len(indices)})


def bench_many(specs: list[str], runs: int = 10, warmup: int = 2, device: str = "cpu", threads: int = 1,
               random_init: bool = False, image_size: int = 1024, cache_dir: Path | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Bench every model; a model that cannot be loaded becomes one ``skipped`` line, not a failure."""
    from tqdm import tqdm

    if device == "cpu":
        torch.set_num_threads(threads)
    elif not torch.cuda.is_available():
        raise DistillError(f"--device {device} asked for but CUDA is not available here; use --device cpu")
    rows, skipped, models = [], [], []
    for spec in tqdm(specs, desc="bench", unit="model"):
        try:
            model = load_bench_model(spec, device, threads, random_init, image_size)
        except DistillError as err:
            skipped.append({"model": spec, "reason": str(err)})
            log(f"bench: skipped {spec}: {err}")
            continue
        row = bench_model(model, runs, warmup, device, threads)
        rows.append(row)
        models.append(model)
        log(f"bench: {row['model']}: total p50 {row.get('total_p50_ms', float('nan')):.1f} ms")
    if cache_dir is not None:
        teacher = next((m for m in models if m.role == ROLE_TEACHER and m.kind != "random-init"), None)
        if teacher is None:
            log("bench: --cache given but no teacher checkpoint among the models (an official SAM .pth); "
                "fidelity not computed")
        else:
            for row, model in zip(rows, models):
                if model is not teacher:
                    add_fidelity(row, model, teacher, Path(cache_dir), device=device)
    return {"machine": machine_description(device, threads), "rows": rows, "skipped": skipped}


def machine_description(device: str, threads: int) -> str:
    import os
    import platform

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {threads} thread(s) of {os.cpu_count()} cores, "
            f"torch {torch.__version__}")


def format_bench_table(result: dict) -> str:
    """Plain-text table for the terminal."""
    header = f"{'model':<38} {'kind':<12} {'format':<9} {'params':>8} {'GFLOPs':>8} {'enc p50':>9} {'dec p50':>9} {'total p50':>10}"
    lines = [header, "-" * len(header)]

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else "-"

    for r in result["rows"]:
        lines.append(f"{r['model'][:38]:<38} {r['kind']:<12} {r['format']:<9} {r['params'] / 1e6:>7.2f}M "
                     f"{num(r.get('gflops'), '>8.1f')} {num(r.get('encoder_p50_ms'), '>7.1f')}ms "
                     f"{num(r.get('decoder_p50_ms'), '>7.1f')}ms {num(r.get('total_p50_ms'), '>8.1f')}ms")
    for s in result["skipped"]:
        lines.append(f"skipped {s['model']}: {s['reason']}")
    lines.append(f"machine: {result['machine']}")
    return "\n".join(lines)
