"""MobileSAM-style decoupled distillation of a student encoder (plus EdgeSAM's prompt-in-the-loop stage).

Its model files are SAMs: our ``model.pt``, MobileSAM's ``mobile_sam.pt`` and the official checkpoints all load as
one segment-anything ``Sam``; ``distill export`` turns them into the SAM encoder/decoder ONNX graphs, the second
kind this package registers (benched in onnxruntime). The third is SAM 2: the official SAM 2 / 2.1 checkpoints and
the students distilled from them, all in sam2's checkpoint layout; the fourth HQ-SAM (official checkpoints and
students of them, segment-anything-hq ``Sam``s)."""
from sam_distill.core.model_files import Exporter, ModelKind, Probe, register_kind
from sam_distill.methods.mobilesam import recipe  # noqa: F401  (registers the recipe)
from sam_distill.sam.hq_models import MODEL_FORMAT as HQ_MODEL_FORMAT
from sam_distill.sam.model_file import MODEL_FORMAT

SAM_PARTS = frozenset({"image_encoder", "prompt_encoder", "mask_decoder"})


HQ_TOKEN = "mask_decoder.hf_token.weight"  # HQ-SAM's extra output token: what tells its files from SAM's


def _is_sam_state_dict(probe: Probe) -> bool:
    return probe.tag is None and SAM_PARTS <= probe.prefixes and HQ_TOKEN not in probe.keys


def _is_hq_state_dict(probe: Probe) -> bool:
    return probe.tag is None and HQ_TOKEN in probe.keys


def _is_sam2_state_dict(probe: Probe) -> bool:
    return probe.tag is None and {"image_encoder", "sam_prompt_encoder", "sam_mask_decoder"} <= probe.prefixes


def _is_onnx(probe: Probe) -> bool:
    return probe.suffix == ".onnx"


register_kind(ModelKind(
    name="sam",
    what="a SAM model (our model.pt, MobileSAM's mobile_sam.pt or an official SAM .pth)",
    how_to_make="make one with a `recipe: mobilesam` run or `distill assemble`",
    tags=(MODEL_FORMAT,),
    matches=_is_sam_state_dict,
    load="sam_distill.sam.model_file:load_model",
    predict="sam_distill.methods.mobilesam.predict:predict_sam",
    bench="sam_distill.methods.mobilesam.bench:bench_sam",
    exporters={
        "onnx": Exporter("sam_distill.export.onnx_export:export_onnx",
                         ("int8", "fp16", "static_shapes", "calibration")),
        "ort": Exporter("sam_distill.export.ort_format:export_ort", ("int8", "fp16")),
        "tflite": Exporter("sam_distill.export.litert:export_litert", ("int8", "fp16")),
        "pte": Exporter("sam_distill.export.executorch:export_pte", ("int8",)),
        "coreml": Exporter("sam_distill.export.coreml:export_coreml", ("fp16",)),
        # engines are always fp16 and built from the static-shape pair
        "engine": Exporter("sam_distill.export.tensorrt:export_engine", ("fp16", "static_shapes")),
    },
))

register_kind(ModelKind(
    name="onnx",
    what="an ONNX graph (a SAM encoder or decoder, or a YOLO-seg network, written by `distill export`)",
    how_to_make="make one with `distill export MODEL --format onnx`",
    matches=_is_onnx,
    bench="sam_distill.methods.mobilesam.bench:bench_onnx",
))

register_kind(ModelKind(
    name="sam2",
    what="a SAM 2 model (an official SAM 2 / 2.1 checkpoint or a student distilled from one)",
    how_to_make="make one with a `recipe: mobilesam` run whose teacher is a SAM 2 (e.g. sam2.1_hiera_tiny)",
    matches=_is_sam2_state_dict,
    load="sam_distill.sam.sam2_models:load_sam2_file",
    predict="sam_distill.methods.mobilesam.predict:predict_sam2",
    bench="sam_distill.methods.mobilesam.bench:bench_sam2",
    exporters={"onnx": Exporter("sam_distill.export.sam2_onnx:export_sam2_onnx", ("int8", "fp16"))},
))

register_kind(ModelKind(
    name="hq",
    what="an HQ-SAM model (an official HQ-SAM checkpoint or a student distilled from one)",
    how_to_make="make one with a `recipe: mobilesam` run whose teacher is an HQ-SAM (e.g. sam_hq_vit_b)",
    tags=(HQ_MODEL_FORMAT,),
    matches=_is_hq_state_dict,
    load="sam_distill.sam.hq_models:load_hq_file",
    predict="sam_distill.methods.mobilesam.predict:predict_hq",
    bench="sam_distill.methods.mobilesam.bench:bench_hq",
    exporters={"onnx": Exporter("sam_distill.export.hq_onnx:export_hq_onnx", ("int8", "fp16"))},
))
