"""Which INT8 recipe makes the TinyViT-5M encoder pay on this CPU: every onnxruntime quantisation variant we could
name, timed against ORT fp32 at two graph optimisation levels, with the mask IoU it loses against fp32.

    nice -n 0 .venv/bin/python benchmarks/int8_recipes.py --images ../shared/data/nwpu_vhr10/images \\
        --out docs/benchmarks/int8_recipes.csv

The target (issue "On the phone and the Jetson for real", item 7): at least 1.5× faster than ORT fp32 with at most
1 point of mask IoU lost. Without ``--model`` the encoder has RANDOM weights (nothing pretrained is reachable here);
the latencies are real, and the IoU column is then the agreement with the fp32 file on real images (box and point
prompts through the same fp32 decoder), not accuracy against ground truth: score a trained student's files with
``distill eval miou ENCODER --decoder DECODER --coco ... --split val`` for that.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from sam_distill.core.images import find_images, load_rgb
from sam_distill.eval.bench import time_runs
from sam_distill.export.onnx_export import export_decoder, export_encoder
from sam_distill.export.parity import mask_iou, sample_prompts
from sam_distill.export.quantize import FeedReader
from sam_distill.export.runtime import SamOnnxPredictor, preprocess
from sam_distill.sam.model_file import build_sam_for, load_model

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def recipes(calibration: list[dict]) -> dict:
    """name → function(source, target). ``source`` is the fp32 encoder after ORT's quantisation pre-processing
    (symbolic shape inference + graph optimisation), as onnxruntime's docs advise, except for the recipes named
    "as exported", which quantise the exported file itself."""

    def dynamic(ops, per_channel=False):
        return lambda s, t: quantize_dynamic(str(s), str(t), weight_type=QuantType.QInt8, op_types_to_quantize=ops,
                                             per_channel=per_channel)

    def static(ops, quant_format, activation=QuantType.QUInt8, symmetric=False, per_channel=True):
        extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
        return lambda s, t: quantize_static(str(s), str(t), FeedReader(list(calibration)), quant_format=quant_format,
                                            activation_type=activation, weight_type=QuantType.QInt8,
                                            per_channel=per_channel, op_types_to_quantize=ops, extra_options=extra)

    return {
        "dynamic MatMul per-tensor, as exported (toolkit before)": dynamic(["MatMul"]),
        "dynamic MatMul per-channel, as exported (toolkit now)": dynamic(["MatMul"], per_channel=True),
        "dynamic MatMul per-tensor": dynamic(["MatMul"]),
        "dynamic MatMul per-channel": dynamic(["MatMul"], per_channel=True),
        "dynamic MatMul+Gemm+Conv per-channel": dynamic(["MatMul", "Gemm", "Conv"], per_channel=True),
        "static QOperator MatMul u8s8": static(["MatMul"], QuantFormat.QOperator),
        "static QOperator Conv+MatMul u8s8": static(["Conv", "MatMul", "Gemm"], QuantFormat.QOperator),
        "static QDQ MatMul u8s8": static(["MatMul"], QuantFormat.QDQ),
        "static QDQ Conv+MatMul u8s8 (toolkit --calibration)": static(["Conv", "MatMul", "Gemm"], QuantFormat.QDQ),
        "static QDQ Conv+MatMul s8s8 symmetric": static(["Conv", "MatMul", "Gemm"], QuantFormat.QDQ,
                                                        activation=QuantType.QInt8, symmetric=True),
    }


def session(path: Path, threads: int, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = LEVELS[level]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def interleaved_medians(sessions: dict, feed: dict, repeats: int, rounds: int) -> dict:
    """Median seconds per session, timed in ``rounds`` interleaved rounds so that a shared machine's drift in speed
    falls on every candidate alike (one candidate after another gave differences of 10 % that did not repeat)."""
    times = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, run_session in sessions.items():
            times[key].append(median_seconds(run_session, feed, repeats))
    return {key: statistics.median(values) for key, values in times.items()}


def median_seconds(run_session: ort.InferenceSession, feed: dict, repeats: int) -> float:
    return statistics.median(time_runs(lambda: run_session.run(None, feed), repeats, warmup=1))


def agreement(encoder: Path, decoder: Path, images: list[np.ndarray], reference: list[list[np.ndarray]],
              prompts: list[list[dict]]) -> tuple[float, float]:
    """Mean mask IoU (point prompts, box prompts) of ``encoder`` + the fp32 decoder against the fp32 pair's masks."""
    predictor = SamOnnxPredictor(encoder, decoder)
    ious = {"point": [], "box": []}
    for image, image_prompts, image_reference in zip(images, prompts, reference):
        predictor.set_image(image)
        for prompt, expected in zip(image_prompts, image_reference):
            masks = predictor.predict(**prompt, multimask_output="box" not in prompt)[0]
            ious["box" if "box" in prompt else "point"].extend(mask_iou(m, e) for m, e in zip(masks, expected))
    return float(np.mean(ious["point"])), float(np.mean(ious["box"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="real images: calibration and agreement")
    parser.add_argument("--model", type=Path, help="a trained TinyViT SAM model.pt (default: random weights)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all candidates")
    parser.add_argument("--calibration-count", type=int, default=8)
    parser.add_argument("--eval-count", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("int8_recipes.csv"))
    args = parser.parse_args()

    if args.model:
        sam, _ = load_model(args.model)
    else:
        import torch

        torch.manual_seed(0)
        sam = build_sam_for("tinyvit_5m", args.size)
    size = int(sam.image_encoder.img_size)
    paths = find_images(args.images)
    calibration_images = [load_rgb(p) for p in paths[: args.calibration_count]]
    eval_images = [load_rgb(p) for p in paths[-args.eval_count:]]  # not the calibration images
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        encoder = export_encoder(sam, folder / "encoder.onnx", 17)
        decoder = export_decoder(sam, folder / "decoder.onnx", 17)
        prepared = folder / "encoder.pre.onnx"
        quant_pre_process(str(encoder), str(prepared))
        fp32_pair = SamOnnxPredictor(encoder, decoder)
        prompts, reference = [], []
        for index, image in enumerate(eval_images):
            fp32_pair.set_image(image)
            image_prompts = sample_prompts(image.shape[:2], 3, seed=index)
            prompts.append(image_prompts)
            reference.append([fp32_pair.predict(**p, multimask_output="box" not in p)[0] for p in image_prompts])
        feed = {"image": preprocess(eval_images[0], size)}
        calibration = [{"image": preprocess(image, size)} for image in calibration_images]
        rows, sessions, candidates = [], {}, {"fp32": (encoder, 1.0, 1.0)}
        for name, quantise in tqdm(recipes(calibration).items(), desc="INT8 recipes"):
            target = folder / f"candidate{len(candidates)}.onnx"
            try:
                quantise(encoder if "as exported" in name else prepared, target)
            except Exception as err:  # a recipe the quantiser refuses is a result too
                rows.append({"recipe": name, "level": "-", "error": str(err).splitlines()[0][:120]})
                continue
            candidates[name] = (target, *agreement(target, decoder, eval_images, reference, prompts))
        for name, (path, _, _) in candidates.items():
            for level in LEVELS:
                try:
                    sessions[(name, level)] = session(path, args.threads, level)
                except Exception as err:  # e.g. a kernel missing for this combination
                    rows.append({"recipe": name, "level": level, "error": str(err).splitlines()[0][:120]})
        medians = interleaved_medians(sessions, feed, args.repeats, args.rounds)
        for (name, level), seconds in medians.items():
            path, point, box = candidates[name]
            rows.append({"recipe": name, "level": level, "median_s": seconds,
                         "speedup_vs_fp32_all": medians[("fp32", "all")] / seconds,
                         "size_mb": path.stat().st_size / 1e6, "point_iou": point, "box_iou": box})
    fields = ["recipe", "level", "median_s", "speedup_vs_fp32_all", "size_mb", "point_iou", "box_iou", "error"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    weights = f"trained ({args.model})" if args.model else "RANDOM weights"
    print(f"TinyViT-5M encoder at {size} px, {weights}, {args.threads} threads, onnxruntime {ort.__version__}; "
          f"IoU = mask agreement with the fp32 pair on {len(eval_images)} real images")
    print(f"{'recipe':<52} {'level':<9} {'median s':>9} {'× fp32':>7} {'MB':>6} {'point IoU':>9} {'box IoU':>8}  "
          "verdict")
    for row in rows:
        if "error" in row:
            print(f"{row['recipe']:<52} {row['level']:<9} failed: {row['error']}")
            continue
        lost = 1.0 - min(row["point_iou"], row["box_iou"])
        verdict = "meets target" if row["speedup_vs_fp32_all"] >= 1.5 and lost <= 0.01 else ""
        print(f"{row['recipe']:<52} {row['level']:<9} {row['median_s']:>9.3f} {row['speedup_vs_fp32_all']:>7.2f} "
              f"{row['size_mb']:>6.1f} {row['point_iou']:>9.3f} {row['box_iou']:>8.3f}  {verdict}")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
