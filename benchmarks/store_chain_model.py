"""Keep a trained model of the NWPU chain in the repository, as fp16, so the chain's later stages start from it.

The chain's runs take CPU-hours and a sandbox does not keep `runs/` between sittings, so each trained model that a
later stage needs (the stage-a teacher, the stage-b student) is stored under ``benchmarks/chain_nwpu/`` in fp16:
half the bytes, and every command reads it as it reads the fp32 ``model.pt`` (weights are cast back to fp32 on
load). The script prints how far the stored weights are from the original, and the sha256 of the stored file.

    python benchmarks/store_chain_model.py runs/chain_nwpu_teacher/model/model.pt benchmarks/chain_nwpu/teacher.pt
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from sam_distill.core.fileio import atomic_torch_save
from sam_distill.sam.model_file import MODEL_FORMAT, load_model


def store(source: Path, target: Path) -> dict:
    payload = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise SystemExit(f"{source} is not a model.pt of this toolkit (format {MODEL_FORMAT})")
    halved = {k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
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
    args = parser.parse_args()
    args.target.parent.mkdir(parents=True, exist_ok=True)
    for key, value in store(args.source, args.target).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
