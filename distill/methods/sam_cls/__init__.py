"""SAM-cls: SAM's everything mode labelled by a classifier (pooled features or zero-shot CLIP)."""
from sam_distill.core.model_files import ModelKind, register_kind
from sam_distill.methods.sam_cls import recipe  # noqa: F401  (registers the recipe)
from sam_distill.methods.sam_cls.model import SAM_CLS_FORMAT

register_kind(ModelKind(
    name="sam_cls",
    what="a SAM-cls model (sam_cls.pt)",
    how_to_make="make one with a `recipe: sam_cls` run",
    tags=(SAM_CLS_FORMAT,),
    load="sam_distill.methods.sam_cls.model:load_sam_cls",
    predict="sam_distill.methods.sam_cls.predict:predict_sam_cls",
    bench="sam_distill.methods.sam_cls.bench:bench_sam_cls",
))
