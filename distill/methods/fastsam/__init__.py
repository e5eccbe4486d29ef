"""FastSAM-style YOLO-seg students trained by ultralytics on SAM's everything-mode pseudo-labels.

Their model files are ultralytics ``.pt`` files, which pickle ultralytics' classes: they are loaded by ultralytics
itself (the one exception to ``weights_only`` loading), and only files whose pickles name ultralytics classes."""
from sam_distill.core.model_files import Exporter, ModelKind, Probe, register_kind
from sam_distill.methods.fastsam import recipe  # noqa: F401  (registers the recipe)


def _is_ultralytics(probe: Probe) -> bool:
    return bool(probe.pickled) and probe.pickled.startswith("ultralytics")


register_kind(ModelKind(
    name="yolo_seg",
    what="a YOLO-seg student (an ultralytics .pt)",
    how_to_make="make one with a `recipe: fastsam` run or `distill yolo train`",
    matches=_is_ultralytics,
    load="sam_distill.methods.fastsam.student:YoloSegStudent",
    predict="sam_distill.methods.fastsam.predict:predict_yolo_seg",
    bench="sam_distill.methods.fastsam.bench:bench_yolo",
    exporters={
        "onnx": Exporter("sam_distill.methods.fastsam.export:export_onnx", ("int8", "fp16")),
        "coreml": Exporter("sam_distill.methods.fastsam.export:export_coreml"),
        "engine": Exporter("sam_distill.methods.fastsam.export:export_engine"),
    },
))
