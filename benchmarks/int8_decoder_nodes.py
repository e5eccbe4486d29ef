"""Which of a SAM decoder's nodes cost accuracy in dynamic INT8: each variant quantised with one group of nodes left
in float, scored against the fp32 decoder and against the ground truth on real images.

One positive click at the point farthest from each object's boundary (the best-scored of SAM's three masks kept)
and the ground-truth box, for up to 8 objects an image of the first ``--images`` validation images; the encoder is
the export's fp32 one throughout, so only the decoder differs. This found that the prompt encoder's coordinate
projections (``export.quantize.coordinate_projections``) are what dynamic INT8 breaks (docs/CHAIN.md, stage e):

    python benchmarks/int8_decoder_nodes.py runs/chain_e_iou/export \
        --coco ../shared/data/nwpu_vhr10/annotations_train.json --images-dir ../shared/data/nwpu_vhr10/images
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from sam_distill.cli.evaluate import exported_predictor
from sam_distill.core.images import load_rgb
from sam_distill.data.coco import load_coco, split_image_ids
from sam_distill.eval.fidelity import mask_iou
from sam_distill.eval.miou import next_click
from sam_distill.export.quantize import coordinate_projections


def node_groups(decoder: Path) -> dict[str, list[str]]:
    """Node names left in float, per variant."""
    nodes = [n.name for n in onnx.load(str(decoder), load_external_data=False).graph.node
             if n.op_type in ("MatMul", "Gemm")]
    projections = coordinate_projections(decoder)
    attention = [name for name in nodes if "attn" in name and name.rsplit("/", 1)[-1] in ("MatMul", "MatMul_1")]
    final = [name for name in nodes if name == "/MatMul_1"]
    return {"nothing kept in float": [], "coordinate projections": projections,
            "attention's activation x activation MatMuls": attention, "final mask product": final,
            "all three": projections + attention + final}


def answers(predictor, coco, image_ids, images_dir: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(one-click mask, box mask, ground truth) per object."""
    rows = []
    for image_id in image_ids:
        predictor.set_image(load_rgb(images_dir / coco.imgs[image_id]["file_name"]))
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))[:8]:
            truth = coco.annToMask(annotation).astype(bool)
            (x, y), _ = next_click(truth, np.zeros_like(truth))
            masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]], np.float32),
                                                 point_labels=np.array([1]), multimask_output=True)
            bx, by, bw, bh = annotation["bbox"]
            box, _, _ = predictor.predict(box=np.array([bx, by, bx + bw, by + bh], np.float32), multimask_output=False)
            rows.append((masks[int(np.argmax(scores))], box[0], truth))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("export_dir", type=Path, help="a `distill export --format onnx` folder (encoder.onnx, decoder.onnx)")
    parser.add_argument("--coco", type=Path, required=True)
    parser.add_argument("--images-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=8, help="first validation images of the fixed split")
    args = parser.parse_args()
    coco = load_coco(args.coco)
    image_ids = split_image_ids(coco, "val", 0.2, args.coco)[: args.images]
    encoder, decoder = args.export_dir / "encoder.onnx", args.export_dir / "decoder.onnx"
    reference = answers(exported_predictor(encoder, decoder), coco, image_ids, args.images_dir)
    print(f"{len(reference)} objects on {len(image_ids)} images; fp32 decoder against the ground truth: one click "
          f"{np.mean([mask_iou(c, t) for c, _, t in reference]):.3f}, box {np.mean([mask_iou(b, t) for _, b, t in reference]):.3f}")
    print("| kept in float | one click vs fp32 | box vs fp32 | one click vs truth | box vs truth |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, kept in node_groups(decoder).items():
            target = Path(folder) / "decoder.int8.onnx"
            quantize_dynamic(str(decoder), str(target), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=kept)
            rows = answers(exported_predictor(encoder, target), coco, image_ids, args.images_dir)
            pairs = list(zip(rows, reference))
            print(f"| {name} | {np.mean([mask_iou(c, r[0]) for (c, _, _), r in pairs]):.3f} "
                  f"| {np.mean([mask_iou(b, r[1]) for (_, b, _), r in pairs]):.3f} "
                  f"| {np.mean([mask_iou(c, t) for c, _, t in rows]):.3f} "
                  f"| {np.mean([mask_iou(b, t) for _, b, t in rows]):.3f} |", flush=True)


if __name__ == "__main__":
    main()
