"""Speed, size and memory of model files, measured the same way for every kind.

One row per model: parameters, GFLOPs (counted by ``torch.utils.flop_counter``), file size, peak memory, and
latency p50/p90 after warm-up of each phase: ``encoder`` (what a kind runs once per image) and ``decoder`` (what
it runs on the encoder's output: one point prompt through SAM's prompt encoder and mask decoder, a prompter's or
detector's heads). ``total`` is derived, never timed: run i of the encoder plus run i of the decoder.

Which phases a kind has and how its model is built for timing is the kind's ``bench`` entry in the model-file
table (``core/model_files.py``; each method registers its own, e.g. ``methods/prompter/bench.py``). This module
keeps the measurement primitives and dispatches through the table, so a file that is not a model gets the same
one line as in every other command.

Every expensive step runs once per phase: FLOPs are counted during the first warm-up call, and peak memory comes
from one call of each phase in a fresh process that loads the model itself (so the figure holds the weights and
nothing another model left behind): the process's peak RSS during those calls minus its RSS before loading
(Linux: the kernel's high-water mark, reset after loading; elsewhere RSS sampled every millisecond), or CUDA's
``max_memory_allocated``. Each row says how in ``peak_mem_method``.
"""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sam_distill.core.errors import DistillError
from sam_distill.core.model_files import identify, same_weights

ROLE_TEACHER, ROLE_STUDENT = "teacher", "student"
PHASES = ("encoder", "decoder")


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


def _status_mb(field_name: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM its peak), in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field_name}:\s+(\d+) kB", status).group(1)) / 1024


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _release_freed_memory() -> None:
    """Hand memory freed while loading (the file's buffers, initialisation's temporaries) back to the system, so
    RSS counts what is live (glibc's ``malloc_trim``; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _sampled_peak_rss(calls: list[Callable[[], object]]) -> float:
    """Peak RSS (MiB) while ``calls`` run, sampled every millisecond: for systems without a resettable peak."""
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for call in calls:
            call()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_mb())


def measure_peak_memory_here(spec: str, random_init: bool, image_size: int, phases: list[str], device: str,
                             threads: int) -> dict:
    """Load ``spec`` in this process and call each of ``phases`` once; the peak memory that took, weights included.

    Meant for a fresh process (``peak_memory`` starts one): the baseline is this process before loading, after
    the kind's code and libraries are imported, so it holds neither another model nor an import.
    """
    if device == "cpu":
        torch.set_num_threads(threads)
    build = model_builder(spec, random_init, image_size)  # imports the kind's bench module and its libraries
    baseline = _rss_mb()
    model = build(device, threads)
    calls = [model.phase_calls()[phase] for phase in phases]
    _release_freed_memory()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for call in calls:
            call()
        torch.cuda.synchronize()
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
                "method": "CUDA max_memory_allocated during one call of each phase, weights included (fresh process)"}
    if _reset_peak_rss():
        for call in calls:
            call()
        peak, how = _status_mb("VmHWM"), "kernel peak RSS (VmHWM, reset after loading)"
    else:
        peak, how = _sampled_peak_rss(calls), "RSS sampled every 1 ms"
    return {"peak_mem_mb": peak - baseline,
            "method": f"{how} during one call of each phase minus RSS before loading: weights + working memory, "
                      f"in a fresh process"}


def peak_memory(model: BenchModel, phases: list[str], device: str = "cpu",
                threads: int = 1) -> tuple[float | None, str]:
    """Peak memory (MiB) of one call of each phase with the model's weights, measured in a fresh process, and how.

    A fresh process is the only place the figure means something: in this one, other models, earlier phases and
    the allocator's cache would be counted or hide the rise.
    """
    if model.spec is None:
        return None, "not measured: the model was not built from a file or a teacher name"
    request = {"spec": model.spec, "random_init": model.random_init, "image_size": model.image_size,
               "phases": phases, "device": device, "threads": threads}
    code = ("import json, sys\nfrom sam_distill.eval.bench import measure_peak_memory_here\n"
            "print('PEAK_MEMORY ' + json.dumps(measure_peak_memory_here(**json.loads(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(request)], capture_output=True, text=True,
                          check=False, env={**os.environ, "YOLO_OFFLINE": "1"})
    reply = [line for line in done.stdout.splitlines() if line.startswith("PEAK_MEMORY ")]
    if done.returncode != 0 or not reply:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return None, f"not measured: the fresh process failed ({reason})"
    result = json.loads(reply[-1].removeprefix("PEAK_MEMORY "))
    return result["peak_mem_mb"], result["method"]


# ---------------------------------------------------------------------------------------------
# Models under test


@dataclass
class BenchModel:
    """What ``bench_model`` needs: callables per phase, and what to say about the model.

    ``spec`` and ``random_init`` rebuild the model in a fresh process for the memory figure (``load_bench_model``
    sets them)."""
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
    spec: str | None = None
    random_init: bool = False

    def phase_calls(self) -> dict[str, Callable[[], object]]:
        """The phases this model has, in order."""
        return {phase: fn for phase, fn in (("encoder", self.encoder), ("decoder", self.decoder)) if fn is not None}


def at_detection_cap(roi_heads) -> str:
    """Set torchvision ``RoIHeads`` to keep every detection up to their cap (score threshold 0), so a bench's
    decoder phase, whose cost grows with the detections it masks, is timed at one fixed load and not at what a
    trained detector happens to score the bench's random-noise image; returns those words for the row's note."""
    roi_heads.score_thresh = 0.0
    return f"every detection up to the cap of {roi_heads.detections_per_img} (score threshold 0)"


def chained(encode: Callable[[], object], decode: Callable[[object], object]) -> tuple[Callable, Callable]:
    """Encoder and decoder phases where the decoder works on the encoder's latest output (when the decoder's cost
    depends on what it is given: detections, prompts). The encoder then runs only when it is itself timed, or once
    when only the decoder phase is asked for, never just to prepare the decoder's input."""
    latest: list = []

    def encoder():
        latest[:] = [encode()]
        return latest[0]

    def decoder():
        return decode(latest[0] if latest else encoder())

    return encoder, decoder


def sam_bench_model(sam, name: str, kind: str, role: str, path: Path | None, device: str, notes=()) -> BenchModel:
    """A segment-anything ``Sam``: its image encoder, and one point prompt through its prompt encoder and mask
    decoder on a random embedding (the decoder's cost does not depend on the embedding's values)."""
    from sam_distill.sam.prompts import decode

    sam = sam.to(device).eval()
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

    return BenchModel(name=name, kind=kind, format="pytorch", role=role, path=path,
                      params=sum(p.numel() for p in sam.parameters()), image_size=size,
                      encoder=encoder, decoder=decoder, notes=list(notes), sam=sam)


def feature_bench_model(model, family: str, name: str, kind: str, role: str, path: Path | None, device: str,
                        notes=()) -> BenchModel:
    """A SAM 2 (``family`` "sam2": sam2's ``SAM2Base``) or an HQ-SAM ("hq": segment-anything-hq's ``Sam``): its image
    path as the package's predictor runs it (for SAM 2 the decoder's high-resolution projections included, for
    HQ-SAM the early ViT feature), and one point through its prompt encoder and mask decoder on random features.
    Parameters: image encoder, prompt encoder and mask decoder (SAM 2's video memory modules are not counted)."""
    if family == "sam2":
        from sam_distill.sam.sam2_models import decode_features, image_features

        size, label_dtype = int(model.image_size), torch.int
        parts = (model.image_encoder, model.sam_prompt_encoder, model.sam_mask_decoder)
        notes = ["SAM 2 image path; parameters without the video memory modules", *notes]
    else:
        from sam_distill.sam.hq_models import decode_features, image_features

        size, label_dtype = int(model.image_encoder.img_size), torch.float
        parts = (model.image_encoder, model.prompt_encoder, model.mask_decoder)
    model = model.to(device).eval()
    pixels = torch.randn(1, 3, size, size, device=device)
    with torch.inference_mode():
        features = {key: torch.randn_like(value) for key, value in image_features(model, pixels).items()}
    point = (torch.tensor([[[size / 2, size / 2]]], device=device), torch.ones(1, 1, device=device, dtype=label_dtype))

    @torch.inference_mode()
    def encoder():
        return image_features(model, pixels)

    @torch.inference_mode()
    def decoder():
        return decode_features(model, features, points=point, multimask=True)

    return BenchModel(name=name, kind=kind, format="pytorch", role=role, path=path,
                      params=sum(p.numel() for part in parts for p in part.parameters()), image_size=size,
                      encoder=encoder, decoder=decoder, notes=list(notes))


def model_builder(spec: str, random_init: bool = False, image_size: int | None = None
                  ) -> Callable[[str, int], BenchModel]:
    """``(device, threads) -> BenchModel`` for a model file (through its kind's ``bench`` entry) or, with
    ``random_init``, a teacher name. Resolving imports the kind's code; loading waits for the call. ``image_size``:
    a SAM file run at another size than its own, the size of a random teacher (default 1024)."""
    path = Path(spec)
    if random_init and not path.exists():
        from sam_distill.sam.teachers import load_teacher

        def random_teacher(device: str, threads: int) -> BenchModel:
            teacher = load_teacher(spec, random_init=True, image_size=image_size or 1024)
            args = (f"{spec} (random-init)", "random-init", ROLE_TEACHER, None, device,
                    [f"{teacher.arch} with RANDOM weights: latency/size are the architecture's, no accuracy"])
            if teacher.family == "sam":
                return sam_bench_model(teacher.model, *args)
            return feature_bench_model(teacher.model, teacher.family, *args)
        return random_teacher
    if not path.exists():
        raise DistillError(f"model {spec} does not exist; give a model file, or a teacher name with --random-init")
    bench = identify(path).function("bench")
    return lambda device, threads: bench(path, device=device, threads=threads, image_size=image_size)


def load_bench_model(spec: str, device: str = "cpu", threads: int = 1, random_init: bool = False,
                     image_size: int | None = None) -> BenchModel:
    """A model file or (with ``random_init``) a teacher name, ready to be timed."""
    model = model_builder(spec, random_init, image_size)(device, threads)
    model.spec, model.random_init = spec, random_init and not Path(spec).exists()
    return model


# ---------------------------------------------------------------------------------------------
# Rows


def bench_model(model: BenchModel, runs: int = 10, warmup: int = 2, device: str = "cpu", threads: int = 1,
                phases: tuple[str, ...] = PHASES, count_flops: bool = True, memory: bool = True) -> dict:
    """One result row (plain data, JSON-ready). Each chosen phase runs ``warmup`` + ``runs`` times here (FLOPs are
    counted during the first warm-up call) and once more in the memory probe's fresh process."""
    row = {"model": model.name, "kind": model.kind, "format": model.format, "role": model.role,
           "path": str(model.path) if model.path else None, "source": "measured",
           "params": model.params, "image_size": model.image_size,
           "file_mb": model.path.stat().st_size / 2**20 if model.path else None,
           "device": device, "threads": threads if device == "cpu" else None, "runs": runs, "warmup": warmup,
           "notes": list(model.notes)}
    available = model.phase_calls()
    chosen = {phase: available[phase] for phase in phases if phase in available}
    absent = [phase for phase in phases if phase not in available]
    if absent:
        row["notes"].append(f"no {' or '.join(absent)} phase in this kind; not timed")
    flops = count_flops and model.format == "pytorch"
    samples = {}
    for phase, fn in chosen.items():
        if flops:
            row[f"{phase}_gflops"] = count_gflops(fn)  # this call is also the first warm-up call
        samples[phase] = time_runs(fn, runs, max(warmup - flops, 0), device)
        stats = latency_stats(samples[phase])
        row[f"{phase}_p50_ms"], row[f"{phase}_p90_ms"] = stats["p50_ms"], stats["p90_ms"]
    if samples and samples.keys() == available.keys():  # every phase of the model measured: the total follows
        stats = latency_stats([sum(run) for run in zip(*samples.values())])
        row["total_p50_ms"], row["total_p90_ms"] = stats["p50_ms"], stats["p90_ms"]
        row["total_method"] = (f"derived: {' + '.join(samples)} of the same run index, summed (not timed again)"
                               if len(samples) > 1 else f"the {next(iter(samples))} phase (this kind's only one)")
    if flops and chosen:
        row["gflops"] = sum(row[f"{phase}_gflops"] for phase in chosen)
    if memory and chosen:
        row["peak_mem_mb"], row["peak_mem_method"] = peak_memory(model, list(chosen), device, threads)
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


def _copy_of(spec: str, rows: list[dict]) -> dict | None:
    """The row of an already benched file holding the same weights as ``spec`` (model.pt and mobile_sam.pt)."""
    path = Path(spec)
    if not path.is_file():
        return None
    for row in rows:
        if row.get("path") and Path(row["path"]).suffix == path.suffix and same_weights(row["path"], path):
            return row
    return None


def bench_many(specs: list[str], runs: int = 10, warmup: int = 2, device: str = "cpu", threads: int = 1,
               random_init: bool = False, image_size: int | None = None, cache_dir: Path | None = None,
               phases: tuple[str, ...] = PHASES, memory: bool = True, log: Callable[[str], None] = print,
               teacher: str | None = None) -> dict:
    """Bench every model; a model that cannot be loaded becomes one ``skipped`` line, not a failure, and a file
    holding the same weights as one already benched is named in that row, not benched again. ``teacher`` (one of
    ``specs``) is benched as the teacher whatever its file format: a SAM fine-tuned here and saved as our
    ``model.pt`` would otherwise count as one more student, leaving no teacher for speed-ups and fidelity."""
    if device != "cpu" and not torch.cuda.is_available():
        raise DistillError(f"--device {device} asked for but CUDA is not available here; use --device cpu")
    threads_before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        return _bench_each(specs, runs, warmup, device, threads, random_init, image_size, cache_dir, phases, memory,
                           log, teacher)
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the caller's thread count as it found it


def _bench_each(specs, runs, warmup, device, threads, random_init, image_size, cache_dir, phases, memory, log,
                teacher_spec) -> dict:
    from tqdm import tqdm

    rows, skipped, models = [], [], []
    for spec in tqdm(specs, desc="bench", unit="model"):
        copy_of = _copy_of(spec, rows)
        if copy_of is not None:
            copy_of.setdefault("same_weights", []).append(spec)
            copy_of["notes"].append(f"{Path(spec).name} holds the same weights (another layout); not benched again")
            log(f"bench: {spec}: the same weights as {copy_of['path']}; one row")
            continue
        try:
            model = load_bench_model(spec, device, threads, random_init, image_size)
        except DistillError as err:
            skipped.append({"model": spec, "reason": str(err)})
            log(f"bench: skipped {spec}: {err}")
            continue
        if spec == teacher_spec:
            model.role = ROLE_TEACHER
        row = bench_model(model, runs, warmup, device, threads, phases, memory=memory)
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
    import platform

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    return (f"{platform.processor() or platform.machine()} CPU, {threads} thread(s) of {os.cpu_count()} cores, "
            f"torch {torch.__version__}")


def format_bench_table(result: dict) -> str:
    """Plain-text table for the terminal, with how total and peak memory were obtained below it."""
    header = (f"{'model':<38} {'kind':<12} {'format':<9} {'params':>8} {'GFLOPs':>8} {'enc p50':>9} {'dec p50':>9} "
              f"{'total p50':>10} {'peak mem':>10}")
    lines = [header, "-" * len(header)]

    def num(value, width: int, unit: str = "") -> str:
        return (f"{value:.1f}{unit}" if isinstance(value, (int, float)) else "-").rjust(width)

    for r in result["rows"]:
        lines.append(f"{r['model'][:38]:<38} {r['kind']:<12} {r['format']:<9} {r['params'] / 1e6:>7.2f}M "
                     f"{num(r.get('gflops'), 8)} {num(r.get('encoder_p50_ms'), 9, 'ms')} "
                     f"{num(r.get('decoder_p50_ms'), 9, 'ms')} {num(r.get('total_p50_ms'), 10, 'ms')} "
                     f"{num(r.get('peak_mem_mb'), 10, 'MiB')}")
        lines += [f"  same weights, not benched again: {spec}" for spec in r.get("same_weights", [])]
    for s in result["skipped"]:
        lines.append(f"skipped {s['model']}: {s['reason']}")
    for key, label in (("total_method", "total"), ("peak_mem_method", "peak mem")):
        methods = sorted({r[key] for r in result["rows"] if r.get(key)})
        lines += [f"{label}: {method}" for method in methods]
    lines.append(f"machine: {result['machine']}")
    return "\n".join(lines)
