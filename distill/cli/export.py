"""``distill export MODEL --format onnx coreml ...``"""
from __future__ import annotations

from pathlib import Path


def cmd_export(args) -> int:
    from sam_distill.core.fileio import read_json
    from sam_distill.export.pipeline import export_model, parity_table
    from sam_distill.export.registry import ExportOptions, Tolerance

    size_suffix = f"-{args.image_size}px" if args.image_size is not None else ""
    out = args.out or args.model.parent / f"{args.model.stem}-export{size_suffix}"
    options = ExportOptions(int8=args.int8, int8_ops=args.int8_ops, fp16=args.fp16, opset=args.opset,
                            static_shapes=args.static_shapes, static_points=args.static_points,
                            max_points=args.max_points,
                            calibration=args.calibration, calibration_count=args.calibration_count,
                            parity_images=args.parity_images, parity_count=args.parity_count,
                            image_size=args.image_size,
                            tolerance=Tolerance(args.max_embedding_diff, args.min_mask_iou, args.max_mask_iou_loss))
    manifest = export_model(args.model, args.format, out, options)
    print(parity_table(read_json(out / "parity.json")))
    print(f"{len(manifest['files'])} file(s), manifest.json and parity.json in {out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a model to ONNX, ORT, LiteRT, ExecuTorch, CoreML or TensorRT "
                              "with parity reports")
    p.add_argument("model", type=Path, help="a SAM model (our model.pt, MobileSAM's mobile_sam.pt, an official SAM "
                   ".pth), an RSPrompter prompter.pt or an ultralytics YOLO-seg .pt")
    p.add_argument("--format", nargs="+", default=["onnx"], metavar="FORMAT",
                   help="one or more of the model's formats: onnx, ort, tflite, pte, coreml, engine (SAM); onnx, "
                   "coreml, engine (YOLO-seg); onnx (prompter)")
    p.add_argument("--out", type=Path, help="output folder (default: MODEL's folder / <name>-export)")
    p.add_argument("--int8", action="store_true", help="also write dynamic INT8 ONNX files, each with its parity (and "
                   "static QDQ with --calibration, SAM models only)")
    p.add_argument("--int8-ops", choices=["matmul", "all"],
                   help="operators dynamic INT8 quantises (default: MatMul only for SAM and prompter models, faster on "
                   "CPUs measured here; all for YOLO-seg, which has no MatMul)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 files (ONNX; CoreML for SAM models)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--image-size", type=int, metavar="N", help="export a SAM model at another input size than it was "
                   "trained at, a multiple of 16 (ConvNet encoders only; small objects gain from a larger one, "
                   "docs/CHAIN.md); the default folder is then <name>-export-<N>px")
    p.add_argument("--static-shapes", action="store_true", help="also write a fixed-shape decoder for TensorRT")
    p.add_argument("--static-points", type=int, default=2, help="points the fixed-shape ONNX decoder takes (TensorRT)")
    p.add_argument("--max-points", type=int, default=6, help="the LiteRT decoder has a signature for each point count "
                   "1..N (box corners and SAM's padding point count)")
    p.add_argument("--calibration", type=Path, help="image folder or teacher cache for static INT8")
    p.add_argument("--calibration-count", type=int, default=16)
    p.add_argument("--parity-images", type=Path, help="images for the parity check (default: synthetic)")
    p.add_argument("--parity-count", type=int, default=3)
    p.add_argument("--max-embedding-diff", type=float, default=1e-3, help="fp32 tolerance: embedding max abs diff")
    p.add_argument("--min-mask-iou", type=float, default=0.99, help="fp32 tolerance: mean mask IoU")
    p.add_argument("--max-mask-iou-loss", type=float, default=0.01, help="fp16/INT8 verdict: mask IoU a file may lose "
                   "against PyTorch beyond its format's fp32 pair")
    p.set_defaults(func=cmd_export)
