"""Export latency benchmark: PyTorch vs onnxruntime fp32 vs INT8 (dynamic MatMul-only, static QDQ) on CPU.

    nice -n 10 .venv/bin/python benchmarks/export_latency.py --threads 2

TinyViT-5M (MobileSAM's encoder) at 1024 and SAM's decoder in every variant; a SAM vit_b encoder as the heavy
reference (fp32 and dynamic INT8 only). Weights are RANDOM-INITIALISED (nothing pretrained exists here): the
latencies and sizes are real, the parity figures show the numerical cost of each format on such weights.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import onnxruntime as ort
import torch

from sam_distill.core.fileio import atomic_write_json, read_json
from sam_distill.core.images import make_synthetic_images
from sam_distill.eval.bench import time_runs
from sam_distill.export.onnx_export import TraceableSamOnnxModel, decoder_example
from sam_distill.export.pipeline import export_model
from sam_distill.export.registry import ExportOptions
from sam_distill.sam.build import build_sam
from sam_distill.sam.model_file import save_model


def median_seconds(run, repeats: int) -> float:
    return statistics.median(time_runs(run, repeats, warmup=1))


def ort_session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(name: str, sam, folder: Path, manifest: dict, threads: int, repeats: int) -> list[dict]:
    parity = read_json(folder / "parity.json")["files"]
    size = int(sam.image_encoder.img_size)
    image = torch.randn(1, 3, size, size)
    decoder_inputs = decoder_example(sam, 2)
    decoder_inputs["orig_im_size"] = torch.tensor([768.0, 1024.0])
    decoder = TraceableSamOnnxModel(sam, return_single_mask=False).eval()
    rows = []
    with torch.inference_mode():
        rows.append({"model": name, "role": "encoder", "runtime": "pytorch", "file": "-",
                     "median_s": median_seconds(lambda: sam.image_encoder(image), repeats)})
        rows.append({"model": name, "role": "decoder", "runtime": "pytorch", "file": "-",
                     "median_s": median_seconds(lambda: decoder(*decoder_inputs.values()), repeats)})
    for entry in manifest["files"]:
        if entry["format"] != "onnx" or entry["precision"] == "fp32-static":
            continue
        session = ort_session(folder / entry["file"], threads)
        feed = {"image": image.numpy()} if entry["role"] == "encoder" else {k: v.numpy() for k, v in decoder_inputs.items()}
        rows.append({"model": name, "role": entry["role"], "runtime": f"onnxruntime {entry['precision']}", "file": entry["file"],
                     "median_s": median_seconds(lambda: session.run(None, feed), repeats),
                     "size_mb": (folder / entry["file"]).stat().st_size / 1e6, "parity": parity.get(entry["file"], {})})
    return rows


def exported(model_path: Path, folder: Path, options: ExportOptions) -> dict:
    """Export once; a rerun only measures again (exports of vit_b take minutes)."""
    if (folder / "manifest.json").is_file():
        return read_json(folder / "manifest.json")
    start = time.perf_counter()
    manifest = export_model(model_path, ["onnx"], folder, options)
    print(f"{folder.name} export + INT8 + parity: {time.perf_counter() - start:.0f} s")
    return manifest


def table(rows: list[dict]) -> str:
    lines = ["| model | part | runtime | median latency | file size | emb. max abs | emb. mean abs | point IoU | box IoU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("parity", {})
        fmt = lambda key, spec: format(p[key], spec) if key in p else "-"  # noqa: E731
        size = f"{r['size_mb']:.1f} MB" if "size_mb" in r else "-"
        lines.append(f"| {r['model']} | {r['role']} | {r['runtime']} | {r['median_s'] * 1000:.0f} ms | {size} | "
                     f"{fmt('embedding_max_abs', '.2g')} | {fmt('embedding_mean_abs', '.2g')} | "
                     f"{fmt('point_mask_iou', '.4f')} | {fmt('box_mask_iou', '.4f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/sam-distill-export-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-vit-b", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = args.out / "calibration"
    if not images.exists():
        make_synthetic_images(images, 8, size=768, seed=3)
    rows = []

    tinyvit = build_sam("tinyvit_5m", 1024)
    model_path = args.out / "tinyvit_5m.pt"
    if not model_path.is_file():
        save_model(tinyvit, model_path, "tinyvit_5m")
    manifest = exported(model_path, args.out / "tinyvit_5m",
                        ExportOptions(int8=True, calibration=images, calibration_count=8, parity_count=2))
    rows += measure("tinyvit_5m", tinyvit, args.out / "tinyvit_5m", manifest, args.threads, args.repeats)

    if not args.skip_vit_b:
        vit_b = build_sam("vit_b", 1024).eval()
        vit_b_path = args.out / "sam_vit_b_random.pth"
        if not vit_b_path.is_file():
            torch.save(vit_b.state_dict(), vit_b_path)  # the official SAM file layout
        manifest = exported(vit_b_path, args.out / "vit_b", ExportOptions(int8=True, parity_count=1))
        rows += [r for r in measure("sam vit_b", vit_b, args.out / "vit_b", manifest, args.threads, max(2, args.repeats // 2))
                 if r["role"] == "encoder"]

    atomic_write_json(args.out / "export_latency.json", rows)
    print(table(rows))


if __name__ == "__main__":
    main()
