"""RSPrompter: an aggregator and a prompter head that prompt SAM's decoder automatically, class-aware."""
from sam_distill.core.model_files import Exporter, ModelKind, register_kind
from sam_distill.methods.prompter import recipe  # noqa: F401  (registers the recipe)
from sam_distill.methods.prompter.model import PROMPTER_FORMAT

register_kind(ModelKind(
    name="prompter",
    what="an RSPrompter model (prompter.pt)",
    how_to_make="make one with a `recipe: prompter` run",
    tags=(PROMPTER_FORMAT,),
    load="sam_distill.methods.prompter.model:load_prompter",
    predict="sam_distill.methods.instance_predict:predict_instances",
    bench="sam_distill.methods.prompter.bench:bench_prompter",
    exporters={"onnx": Exporter("sam_distill.methods.prompter.export:export_onnx", ("int8", "fp16"))},
))
