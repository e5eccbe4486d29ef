"""Latency at 1024 px of the SAM 2.1 and HQ-SAM teachers and of the students distilled from them (random weights:
the architectures' speed, no accuracy). Writes the student model files (each student assembled with a
random-initialised teacher of its family, as `distill run` assembles it), then times everything with
`distill bench`; the rows land in OUT/bench.json and the table is printed. Figures: docs/BENCHMARKS.md.

    python benchmarks/teacher_families.py [--out runs/teacher_families] [--threads 2] [--runs 3]
"""
from __future__ import annotations

import argparse
from pathlib import Path

SAM2_TEACHERS = ("sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l")
SAM2_STUDENTS = ("hiera_micro", "timm_mobilenetv3_large_100")
HQ_TEACHERS = ("hq_vit_b", "hq_vit_l", "hq_vit_h")
HQ_STUDENT = "tinyvit_5m"


def write_students(out: Path) -> list[Path]:
    """SAM 2 students with SAM 2.1 tiny's decoder (the decoder is the same at every SAM 2.1 size), and an HQ student
    for each HQ-SAM size (its early-feature head is as wide as that teacher's ViT)."""
    from sam_distill.sam import hq_models, sam2_models
    from sam_distill.sam.teachers import load_teacher

    paths = []
    teacher = load_teacher("sam2.1_hiera_t", random_init=True)
    for name in SAM2_STUDENTS:
        path = out / f"sam2_student_{name}.pt"
        if not path.exists():
            student, encoder = sam2_models.build_student(name, teacher.model, teacher.config)
            model = sam2_models.assemble_student(student, teacher.model)
            sam2_models.save_sam2_model(model, sam2_models.model_config(teacher.config, encoder), path, name,
                                        {"weights": "random"})
        paths.append(path)
    for arch in HQ_TEACHERS:
        path = out / f"hq_student_{HQ_STUDENT}_for_{arch}.pt"
        if not path.exists():
            teacher = load_teacher(arch, random_init=True)
            model = hq_models.assemble_student(hq_models.build_student(HQ_STUDENT, teacher.model), teacher.model)
            hq_models.save_hq_model(model, HQ_STUDENT, path, {"weights": "random", "teacher": arch})
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/teacher_families"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    students = write_students(args.out)

    from sam_distill.cli import main as distill

    raise SystemExit(distill(["bench", *SAM2_TEACHERS, *HQ_TEACHERS, *map(str, students), "--random-init",
                              "--image-size", "1024", "--threads", str(args.threads), "--runs", str(args.runs),
                              "--warmup", "1", "--no-memory", "--out", str(args.out / "bench.json")]))


if __name__ == "__main__":
    main()
