"""The ``prompter`` recipe of ``distill run``: an RSPrompter head on the configured encoder."""
from __future__ import annotations

from sam_distill.methods.instances import run_trained_instance_recipe
from sam_distill.methods.prompter.config import PrompterConfig
from sam_distill.methods.registry import register_method
from sam_distill.methods.sections import EncoderConfig, InstancesConfig, TrainConfig


def prompter_model_config(config, num_classes: int) -> dict:
    spec, encoder = config.prompter, config.encoder
    return {"encoder": encoder.name, "image_size": encoder.image_size, "head": spec.head, "num_classes": num_classes,
            "taps": spec.taps, "width": spec.width, "hidden": spec.hidden, "norm": spec.norm,
            "train_encoder": encoder.train, "lora_rank": encoder.lora_rank,
            "lora_alpha": encoder.lora_alpha, "lora_targets": list(encoder.lora_targets),
            "train_decoder": spec.train_decoder,
            "head_kwargs": {"num_queries": spec.num_queries, "prompts_per_object": spec.prompts_per_object,
                            "sincos": spec.sincos, "decoder_layers": spec.decoder_layers,
                            "pixel_decoder": spec.pixel_decoder, "pixel_decoder_layers": spec.pixel_decoder_layers,
                            "dense_prompt": spec.dense_prompt}}


@register_method("prompter", {"encoder": EncoderConfig, "instances": InstancesConfig, "train": TrainConfig,
                             "prompter": PrompterConfig})
def run_prompter(config, run_dir) -> dict:
    from sam_distill.methods.prompter.model import build_prompter, save_prompter

    def build(num_classes: int):
        return build_prompter(prompter_model_config(config, num_classes), config.encoder.checkpoint)

    return run_trained_instance_recipe(config, run_dir, "prompter", build, save_prompter, "prompter.pt")
