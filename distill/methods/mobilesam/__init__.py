"""MobileSAM-style decoupled distillation of a student encoder (plus EdgeSAM's prompt-in-the-loop stage).

Its model files are SAMs: our ``model.pt``, MobileSAM's ``mobile_sam.pt`` and the official checkpoints all load as
one segment-anything ``Sam``."""
from sam_distill.core.model_files import ModelKind, Probe, register_kind
from sam_distill.methods.mobilesam import recipe  # noqa: F401  (registers the recipe)
from sam_distill.sam.model_file import MODEL_FORMAT

SAM_PARTS = frozenset({"image_encoder", "prompt_encoder", "mask_decoder"})


def _is_sam_state_dict(probe: Probe) -> bool:
    return probe.tag is None and SAM_PARTS <= probe.prefixes


register_kind(ModelKind(
    name="sam",
    what="a SAM model (our model.pt, MobileSAM's mobile_sam.pt or an official SAM .pth)",
    how_to_make="make one with a `recipe: mobilesam` run or `distill assemble`",
    tags=(MODEL_FORMAT,),
    matches=_is_sam_state_dict,
    load="sam_distill.sam.model_file:load_model",
    predict="sam_distill.methods.mobilesam.predict:predict_sam",
))
