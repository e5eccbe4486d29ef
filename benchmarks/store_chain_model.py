"""Keep a trained model of the NWPU chain in the repository, as fp16, so the chain's later stages start from it.

The chain's runs take CPU-hours and a sandbox does not keep `runs/` between sittings, so each trained model that a
later stage needs (the stage-a teacher, the stage-b student) is stored under ``benchmarks/chain_nwpu/`` in fp16:
half the bytes, and every command reads it as it reads the fp32 ``model.pt`` (weights are cast back to fp32 on
load). The script prints how far the stored weights are from the original, and the sha256 of the stored file.

    python benchmarks/store_chain_model.py runs/chain_nwpu_teacher/model/model.pt benchmarks/chain_nwpu/teacher.pt

A ``finetune`` run stopped before its end has no ``model.pt`` yet; its training state holds the SAM at the last
checkpoint, which ``--encoder`` and ``--size`` (as in the run's config) turn into one:

    python benchmarks/store_chain_model.py runs/chain_nwpu_teacher/checkpoints/finetune/last.pt \
        benchmarks/chain_nwpu/teacher_resnet34_512.pt --encoder timm_resnet34 --size 512
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from sam_distill.core.fileio import atomic_torch_save
from sam_distill.sam.model_file import MODEL_FORMAT, build_sam_for, load_model, save_model
from sam_distill.train.loop import STATE_FORMAT

FP16_MAX = 65_000.0


def model_from_state(state_path: Path, encoder: str, size: int) -> Path:
    """The SAM held by a ``finetune`` training state (its ``sam.*`` weights), as ``model_at_step<N>.pt`` beside
    the state (fp32, in the run folder; only the fp16 copy goes into the repository)."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("objective") != "finetune":
        raise SystemExit(f"{state_path} is a training state of {state.get('objective')}, not of finetune")
    sam = build_sam_for(encoder, size)
    sam.load_state_dict({k[len("sam."):]: v for k, v in state["model"].items() if k.startswith("sam.")})
    meta = {**state["meta"], "step": int(state["step"]), "total_steps": int(state["total_steps"]),
            "note": f"the SAM of {state_path} at step {state['step']} of {state['total_steps']}"}
    return save_model(sam, state_path.parent / f"model_at_step{state['step']}.pt", encoder, meta)


def store(source: Path, target: Path) -> dict:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise SystemExit(f"{source} is not a model.pt of this toolkit (format {MODEL_FORMAT}); a training state "
                         "needs --encoder and --size")
    # A value beyond fp16's range (a batch norm's running variance can be) keeps its tensor in fp32.
    halved = {k: v.half() if v.is_floating_point() and v.abs().max() < FP16_MAX else v
              for k, v in payload["state_dict"].items()}
    meta = {**payload.get("meta", {}), "stored_as": "fp16", "stored_from": str(source)}
    atomic_torch_save({**payload, "state_dict": halved, "meta": meta}, target)
    original, _ = load_model(source)
    stored, _ = load_model(target)
    stored_state = stored.state_dict()
    worst = max(float((v.float() - stored_state[k].float()).abs().max()) for k, v in original.state_dict().items()
                if v.is_floating_point() and v.numel())
    return {"file": str(target), "megabytes": round(target.stat().st_size / 2 ** 20, 1),
            "max_abs_weight_change": worst, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a model.pt written by a run")
    parser.add_argument("target", type=Path, help="where the fp16 copy goes (benchmarks/chain_nwpu/NAME.pt)")
    parser.add_argument("--encoder", help="for a finetune training state (last.pt): encoder.name of its run")
    parser.add_argument("--size", type=int, help="for a finetune training state: encoder.image_size of its run")
    args = parser.parse_args()
    args.target.parent.mkdir(parents=True, exist_ok=True)
    source = args.source
    if torch.load(source, map_location="cpu", weights_only=True).get("format") == STATE_FORMAT:
        if not (args.encoder and args.size):
            raise SystemExit(f"{source} is a training state: give --encoder and --size as in its run's config")
        source = model_from_state(source, args.encoder, args.size)
        print(f"model.pt of the training state: {source}")
    for key, value in store(source, args.target).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
