"""SAM fine-tuned (or trained from scratch) on ground-truth instance masks with prompts sampled as SAM was
trained; it writes a plain SAM ``model.pt`` (file kind "sam"), so it registers no kind of its own."""
from sam_distill.methods.finetune import recipe  # noqa: F401  (registers the recipe)
