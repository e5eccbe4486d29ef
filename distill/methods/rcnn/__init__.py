"""The RSPrompter paper's detector baselines: SAM-det (detector boxes as SAM prompts) and SAM-seg (Mask R-CNN heads)."""
from sam_distill.core.model_files import ModelKind, register_kind
from sam_distill.methods.rcnn import recipe  # noqa: F401  (registers the sam_det and sam_seg recipes)
from sam_distill.methods.rcnn.model import RCNN_FORMAT

register_kind(ModelKind(
    name="rcnn",
    what="a SAM-det or SAM-seg model (sam_det.pt, sam_seg.pt)",
    how_to_make="make one with a `recipe: sam_det` or `recipe: sam_seg` run",
    tags=(RCNN_FORMAT,),
    load="sam_distill.methods.rcnn.model:load_rcnn",
    predict="sam_distill.methods.instance_predict:predict_instances",
    bench="sam_distill.methods.rcnn.bench:bench_rcnn",
))
