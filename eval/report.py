"""``distill report``: heavy vs light SAM side by side, from one or more run folders.

Writes ``report.md``, a self-contained ``report.html`` (plots as base64 PNG, no external files),
``results.json`` and ``pareto.png`` (accuracy against latency, log time axis, Pareto front drawn).

What a run folder contributes (all under ``RUN/reports/``; every file is optional):

* ``bench.json``: ``distill bench --out`` output, ``{"machine": str, "rows": [row, ...], "skipped": [...]}``.
* ``fidelity.json``: ``distill eval fidelity`` output; attached to the run's student rows (the
  ``sam-distill`` and ``mobilesam`` files of one run hold the same weights).
* ``metrics_*.json``: accuracy another tool computed, ``{"model": NAME, "metrics": {"mask_AP": 41.0,
  "mask_AP50": ..., "mask_AP75": ...}}`` with AP in percent (0-100, as papers quote it). NAME is
  matched against a row's model name, file name or file stem; unmatched metrics become rows of
  their own (accuracy, no latency).
* ``coco_*.json``: ``{"model": NAME, "ground_truth": "annotations.json", "detections": "dt.json"}``
  (paths relative to the file, detections in COCO results format with RLE ``segmentation``): mask
  AP/AP50/AP75 computed here with pycocotools.
* ``miou_*.json``: ``distill eval miou MODEL --out`` output (SAM's ground-truth protocols): its box, one-click,
  k-click mIoU, NoC and box-as-mask figures become the ground-truth columns of MODEL's row (matched by file name).

Anything missing, half-written or without ground truth becomes one line under "Notes" and the
report renders what it has.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

from sam_distill.core.errors import DistillError
from sam_distill.core.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from sam_distill.eval.bench import ROLE_TEACHER
from sam_distill.eval.coco_ap import mask_ap as coco_mask_ap
from sam_distill.eval.miou import headline_scores
from sam_distill.eval.reference import reference_rows

# Accuracy axes in order of preference: task accuracy against ground truth beats fidelity to the teacher.
METRICS = {"mask_AP": "mask AP (COCO, %)", "gt_box_miou": "box mIoU vs ground truth",
           "point_miou": "1-point mIoU vs teacher", "box_miou": "box mIoU vs teacher"}
# SAM's ground-truth protocols (``distill eval miou --out reports/miou_NAME.json``, the finetune recipe's
# metrics_finetune.json): shown as columns when any row has them.
GROUND_TRUTH_COLUMNS = {"gt_box_miou": "GT box mIoU", "gt_point_miou": "GT 1-click mIoU", "gt_noc85": "NoC@85",
                        "gt_box_as_mask_miou": "box as mask"}
FIDELITY_KEYS = ("point_miou", "box_miou", "embedding_cosine")
# the bench kinds of the models a mobilesam run writes (SAM, MobileSAM layout, SAM 2, HQ-SAM): fidelity is theirs
STUDENT_KINDS = ("sam-distill", "mobilesam", "sam-distill-sam2", "sam-distill-hq")
AP_KEYS = ("mask_AP", "mask_AP50", "mask_AP75")


# ---------------------------------------------------------------------------------------------
# Accuracy inputs


def mask_ap(ground_truth: Path, detections) -> dict:
    """COCO mask AP, AP50, AP75 in percent (as papers quote them); ``detections`` a path or a list."""
    gt_data = read_json(ground_truth)
    if not gt_data.get("annotations"):
        raise DistillError(f"dataset {ground_truth} has no ground-truth annotations; mask AP needs an "
                           f"annotated COCO file (one with an 'annotations' list)")
    stats = coco_mask_ap(gt_data, detections)["stats"]
    return {key: stats[key.removeprefix("mask_")] * 100 for key in AP_KEYS}


def _read(path: Path, notes: list[str]):
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        notes.append(f"{path}: half-written or not JSON; skipped (rerun the step that writes it)")
    except OSError as err:
        notes.append(f"{path}: unreadable ({err.strerror}); skipped")
    return None


def _matches(row: dict, name: str) -> bool:
    """Whether accuracy reported under ``name`` belongs to ``row``: its model name, or the name or stem of its file
    or of a file holding the same weights (``mobile_sam.pt`` beside ``model.pt``)."""
    paths = [Path(p) for p in [row.get("path"), *row.get("same_weights", [])] if p]
    return bool(name) and (name == row["model"] or any(name in (path.name, path.stem) for path in paths))


def _attach_accuracy(rows: list[dict], name: str, metrics: dict, run: str, origin: Path) -> None:
    matched = [r for r in rows if _matches(r, name)]
    if not matched:
        matched = [{"model": name, "kind": "accuracy-only", "format": "-", "role": "student", "source": "measured",
                    "run": run, "notes": [f"accuracy from {origin.name}; no latency measured"]}]
        rows.extend(matched)
    for row in matched:
        row.update({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})


def collect_run(run_dir: Path, notes: list[str]) -> list[dict]:
    """Rows of one run folder (or of one bench JSON file); see :func:`holds_run`."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        reports, bench_path, run = run_dir.parent, run_dir, run_dir.stem
    else:
        reports, bench_path, run = run_dir / "reports", run_dir / "reports" / "bench.json", run_dir.name
    rows: list[dict] = []
    bench = _read(bench_path, notes) if bench_path.exists() else None
    if bench_path.exists() and bench is not None:
        if not isinstance(bench, dict) or not isinstance(bench.get("rows"), list):
            notes.append(f"{bench_path}: not a `distill bench --out` file (no 'rows' list); skipped")
        else:
            for row in bench["rows"]:
                if isinstance(row, dict) and "model" in row:
                    rows.append({**row, "run": run, "machine": bench.get("machine", "")})
            for skipped in bench.get("skipped", []):
                notes.append(f"{run}: {skipped.get('model')} was not benchmarked: {skipped.get('reason')}")
    elif not bench_path.exists():
        notes.append(f"{run_dir}: no {bench_path.relative_to(run_dir) if run_dir.is_dir() else bench_path.name}; "
                     f"no speed figures (run `distill bench MODEL... --out {bench_path}`)")

    fidelity_path = reports / "fidelity.json"
    if fidelity_path.exists() and (fid := _read(fidelity_path, notes)) is not None:
        summary = fid.get("summary") if isinstance(fid, dict) else None
        students = [r for r in rows if r.get("kind") in STUDENT_KINDS and "point_miou" not in r]
        if not isinstance(summary, dict) or not all(k in summary for k in FIDELITY_KEYS):
            notes.append(f"{fidelity_path}: has no complete 'summary'; fidelity skipped")
        elif not students:
            notes.append(f"{fidelity_path}: no student row in this run to attach it to")
        for row in students if isinstance(summary, dict) and all(k in summary for k in FIDELITY_KEYS) else []:
            row.update({k: float(summary[k]) for k in FIDELITY_KEYS})
            row["fidelity_images"] = fid.get("images")

    for path in sorted(reports.glob("metrics_*.json")):
        data = _read(path, notes)
        if data is None:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict) or not data.get("model"):
            notes.append(f"{path}: expected {{'model': NAME, 'metrics': {{'mask_AP': ...}}}}; skipped")
            continue
        _attach_accuracy(rows, str(data["model"]), data["metrics"], run, path)

    for path in sorted(reports.glob("miou_*.json")):  # `distill eval miou MODEL --out RUN/reports/miou_NAME.json`
        data = _read(path, notes)
        if data is None:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) or not data.get("model") \
                or not isinstance(data.get("max_clicks"), int):
            notes.append(f"{path}: not a `distill eval miou --out` file (summary, max_clicks, model); skipped")
            continue
        try:
            scores = headline_scores(data["summary"], data["max_clicks"])
        except KeyError as err:
            notes.append(f"{path}: its summary has no {err}; skipped")
            continue
        model = Path(str(data["model"]).split(" + ")[0]).name  # an exported pair is named by its encoder
        _attach_accuracy(rows, model, {f"gt_{k}": v for k, v in scores.items()}, run, path)

    for path in sorted(reports.glob("coco_*.json")):
        data = _read(path, notes)
        if data is None:
            continue
        try:
            if not isinstance(data, dict) or not {"model", "ground_truth", "detections"} <= set(data):
                raise DistillError(f"{path}: expected {{'model', 'ground_truth', 'detections'}}; skipped")
            detections = data["detections"]
            if isinstance(detections, str):
                detections = path.parent / detections
            _attach_accuracy(rows, str(data["model"]), mask_ap(path.parent / data["ground_truth"], detections), run, path)
        except DistillError as err:
            notes.append(f"{path}: {err}")
        except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
            notes.append(f"{path}: COCO evaluation failed ({type(err).__name__}: {err}); skipped")

    teacher = next((r for r in rows if r.get("role") == ROLE_TEACHER), None)
    if teacher is not None and any(k in r for r in rows for k in FIDELITY_KEYS):
        for key in FIDELITY_KEYS:  # a teacher reproduces itself exactly
            teacher.setdefault(key, 1.0)
    return rows


# ---------------------------------------------------------------------------------------------
# Figures


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both, fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def choose_metric(rows: list[dict]) -> str | None:
    for metric in METRICS:
        if sum(1 for r in rows if isinstance(r.get(metric), (int, float)) and "total_p50_ms" in r) >= 1:
            return metric
    return None


def heavy_vs_light(rows: list[dict], metric: str | None,
                   teacher_runs: dict[str, str] | None = None) -> tuple[list[dict], list[str]]:
    """Per run: each row's speed-up over the run's teacher and share of the teacher's accuracy kept.

    ``teacher_runs`` maps a run to the run that stands as its teacher: the same recipe on the heavy encoder, whose
    model is then the teacher of every model of the first run (an instance method on the student's encoder against
    the same method on the teacher's). That run's own teacher row when it has one, else its first row."""
    teacher_runs = teacher_runs or {}
    by_run = {run: [r for r in rows if r.get("run") == run] for run in dict.fromkeys(r.get("run") for r in rows)}
    unknown = [name for pair in teacher_runs.items() for name in pair if name not in by_run]
    if unknown:
        raise DistillError(f"report --against: no run named {', '.join(dict.fromkeys(unknown))} among the reported "
                           f"runs ({', '.join(map(str, by_run)) or 'none'}); give RUN=TEACHER_RUN by run folder name")
    table, notes = [], []
    for run, members in by_run.items():
        own_teacher = next((r for r in members if r.get("role") == ROLE_TEACHER), None)
        if run in teacher_runs:
            candidates = by_run[teacher_runs[run]]
            teacher = next((r for r in candidates if r.get("role") == ROLE_TEACHER), candidates[0])
            teacher_name = f"{teacher_runs[run]}: {teacher['model']}"
        else:
            teacher, teacher_name = own_teacher, own_teacher and own_teacher["model"]
        if teacher is None:
            if run not in teacher_runs.values():  # a run that is some run's teacher needs none of its own
                notes.append(f"{run}: no teacher row, so no speed-up (bench the teacher too, or pair the run with "
                             f"its heavy counterpart: --against {run}=TEACHER_RUN)")
            continue
        for row in members:
            if row is teacher or row is own_teacher:
                continue
            entry = {"run": run, "model": row["model"], "format": row.get("format", "-"), "teacher": teacher_name}
            for phase in ("encoder", "total"):
                t, s = teacher.get(f"{phase}_p50_ms"), row.get(f"{phase}_p50_ms")
                entry[f"{phase}_speedup"] = t / s if t and s else None
            t_params, s_params = teacher.get("params"), row.get("params")
            entry["size_ratio"] = t_params / s_params if t_params and s_params else None
            # the report's axis when both rows have it, else the first figure both have: a distilled SAM beside
            # its teacher in a report whose axis is the instance methods' mask AP still shows what it kept
            shared = [m for m in dict.fromkeys([metric, *METRICS]) if m and isinstance(teacher.get(m), (int, float))
                      and isinstance(row.get(m), (int, float))]
            entry["accuracy_metric"] = shared[0] if shared else None
            t_acc, s_acc = (teacher[shared[0]], row[shared[0]]) if shared else (None, None)
            entry["accuracy_kept"] = s_acc / t_acc if t_acc and s_acc is not None else None
            table.append(entry)
    return table, notes


def label_log_axis(ax) -> None:
    """Ticks at 1, 2 and 5 of every decade, labelled as plain numbers: measured latencies often span less than one
    decade, where the default log axis would show no number at all; the minor ticks stay unlabelled."""
    import matplotlib.ticker

    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_pareto(rows: list[dict], references: list[dict], metric: str | None) -> bytes:
    """PNG bytes: measured accuracy vs latency with the front (left); quoted published rows (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_ref) = plt.subplots(1, 2, figsize=(13, 5.2))
    points = [(r["total_p50_ms"], r[metric], r) for r in rows
              if metric and isinstance(r.get(metric), (int, float)) and r.get("total_p50_ms")]
    if points:
        several_runs = len({r.get("run") for _, _, r in points}) > 1  # then the run tells like-named models apart
        for rank, (x, y, r) in enumerate(sorted(points, key=lambda p: p[0])):
            marker = "s" if r.get("role") == ROLE_TEACHER else "o"
            ax.scatter(x, y, marker=marker, s=60, color="#c0392b" if marker == "s" else "#2471a3", zorder=3)
            # neighbours along the time axis take turns at three heights, so close points keep readable labels
            label = f"{r['run']}: {r['model']}" if several_runs else r["model"]
            ax.annotate(f"{label} [{r.get('format', '')}]", (x, y), textcoords="offset points",
                        xytext=(6, (6, -12, 18)[rank % 3]), fontsize=8)
        front = [points[i] for i in pareto_front([(x, y) for x, y, _ in points])]
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#27ae60", linewidth=1.5,
                label="Pareto front", zorder=2)
        ax.legend(loc="best", fontsize=8)
        ax.set_xscale("log")
        label_log_axis(ax)
        ax.margins(x=0.25, y=0.12)  # room for labels; no marker on the frame or under the legend
        ax.set_ylabel(METRICS[metric])
    else:
        ax.text(0.5, 0.5, "no model with both accuracy and latency", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency, encoder + decoder p50 (ms, log scale)")
    ax.set_title("measured here")
    ax.grid(True, which="both", alpha=0.3)

    quoted = [r for r in references if r.get("total_p50_ms") and r.get("mask_AP")]
    for r in quoted:
        ax_ref.scatter(r["total_p50_ms"], r["mask_AP"], marker="^", color="#7f8c8d", zorder=3)
        ax_ref.annotate(f"{r['model']} ({r['hardware']})", (r["total_p50_ms"], r["mask_AP"]),
                        textcoords="offset points", xytext=(5, 4), fontsize=7)
    if quoted:
        front = [quoted[i] for i in pareto_front([(r["total_p50_ms"], r["mask_AP"]) for r in quoted])]
        ax_ref.step([r["total_p50_ms"] for r in front], [r["mask_AP"] for r in front], where="post",
                    color="#95a5a6", linestyle="--", label="front (mixed hardware)")
        ax_ref.legend(loc="lower right", fontsize=8)
    ax_ref.set_xscale("log")
    label_log_axis(ax_ref)
    ax_ref.set_xlabel("published latency (ms, log scale; each on its own hardware)")
    ax_ref.set_ylabel("COCO mask AP (%)")
    ax_ref.set_title("QUOTED from papers, not measured here")
    ax_ref.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Tables


def _fmt(value, spec: str = ".1f", suffix: str = "") -> str:
    return f"{value:{spec}}{suffix}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _measured_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "model", "kind", "format", "params (M)", "GFLOPs", "file (MB)", "enc p50/p90 (ms)",
            "dec p50/p90 (ms)", "total p50/p90 (ms)", "peak mem (MB)", "1-pt mIoU", "box mIoU", "cosine",
            "mask AP", "AP50", "AP75"]
    body = []
    for r in rows:
        copies = ", ".join(Path(p).name for p in r.get("same_weights", []))
        body.append([r.get("run", ""), r["model"] + (f" (same weights: {copies})" if copies else ""),
                     r.get("kind", ""), r.get("format", ""),
                     _fmt(r.get("params", 0) / 1e6 if r.get("params") else None, ".2f"), _fmt(r.get("gflops")),
                     _fmt(r.get("file_mb")),
                     *[f"{_fmt(r.get(f'{p}_p50_ms'))} / {_fmt(r.get(f'{p}_p90_ms'))}" for p in ("encoder", "decoder", "total")],
                     _fmt(r.get("peak_mem_mb")), _fmt(r.get("point_miou"), ".3f"), _fmt(r.get("box_miou"), ".3f"),
                     _fmt(r.get("embedding_cosine"), ".3f"), *[_fmt(r.get(k)) for k in AP_KEYS]])
    ground_truth = [key for key in GROUND_TRUTH_COLUMNS if any(key in r for r in rows)]
    head += [GROUND_TRUTH_COLUMNS[key] for key in ground_truth]
    for row, cells in zip(rows, body):
        cells += [_fmt(row.get(key), ".2f" if key == "gt_noc85" else ".3f") for key in ground_truth]
    return head, body


def _heavy_light_table(entries: list[dict], metric: str | None) -> tuple[list[str], list[list[str]]]:
    head = ["run", "student", "format", "teacher", "encoder speed-up", "total speed-up", "params ratio",
            f"share of teacher's {METRICS[metric] if metric else 'accuracy'} kept"]

    def kept(entry: dict) -> str:
        share = _fmt(entry["accuracy_kept"] * 100 if entry["accuracy_kept"] is not None else None, ".1f", "%")
        other = entry.get("accuracy_metric") not in (None, metric)
        return f"{share} ({METRICS[entry['accuracy_metric']]})" if other else share

    body = [[e["run"], e["model"], e["format"], e["teacher"], _fmt(e["encoder_speedup"], ".1f", "x"),
             _fmt(e["total_speedup"], ".1f", "x"), _fmt(e["size_ratio"], ".1f", "x"), kept(e)] for e in entries]
    return head, body


def _reference_table(refs: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["model", "params (M)", "GFLOPs", "enc (ms)", "dec (ms)", "total (ms)", "COCO mask AP", "hardware",
            "source", "note"]
    body = [[r["model"], _fmt(r.get("params", 0) / 1e6 if r.get("params") else None, ".1f"), _fmt(r.get("gflops")),
             _fmt(r.get("encoder_p50_ms")), _fmt(r.get("decoder_p50_ms")), _fmt(r.get("total_p50_ms")),
             _fmt(r.get("mask_AP")), r["hardware"], r["citation"], r.get("note", "")] for r in refs]
    return head, body


def _markdown_table(head: list[str], body: list[list[str]]) -> str:
    if not body:
        return "_(none)_\n"

    def cells(row) -> str:
        return "| " + " | ".join(str(c).replace("|", "/") for c in row) + " |"

    return "\n".join([cells(head), "|" + "---|" * len(head), *map(cells, body)]) + "\n"


def _html_table(head: list[str], body: list[list[str]]) -> str:
    if not body:
        return "<p><em>(none)</em></p>"
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;"
       "margin:8px 0 20px;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
       "th{background:#f2f2f2}td:nth-child(-n+4){text-align:left}.quoted{color:#555}img{max-width:100%}")


# ---------------------------------------------------------------------------------------------
# The report


def holds_run(path: Path) -> bool:
    """A bench JSON file, or a folder ``distill run`` made (its ``config.yaml``) or that has a ``reports/`` folder."""
    path = Path(path)
    return path.is_file() or (path / "config.yaml").is_file() or (path / "reports").is_dir()


# Detections below this score are left out of overlays.png: an instance model's low-confidence guesses would hide
# what it actually claims; early-training models score low, so the report's caller may lower it.
OVERLAY_MIN_SCORE = 0.3


def overlays_caption(min_score: float) -> str:
    return ("Ground truth first, then each model. Promptable SAMs are given the ground-truth boxes as prompts; "
            f"instance models show their own detections (score at least {min_score:g}). Colours follow the class.")


def overlay_models(rows: list[dict]) -> list[tuple[str, Path]]:
    """The PyTorch model files of the report's rows, once each, in row order (ONNX files and random weights have
    no column: an export's masks are its model's, within its parity verdict)."""
    chosen: dict[str, tuple[str, Path]] = {}
    for row in rows:
        path = row.get("path")
        if path and Path(path).suffix in (".pt", ".pth") and row.get("kind") != "random-init" and path not in chosen:
            chosen[path] = (f"{row.get('run', '')}: {Path(path).name}", Path(path))
    return list(chosen.values())


def build_report(run_dirs: list[Path], out_dir: Path, log=print, overlays: dict | None = None,
                 teacher_runs: dict[str, str] | None = None) -> dict:
    """Collect, compute and write the four report files atomically (five with ``overlays``). Returns results.json's
    content.

    ``overlays`` (``annotations``, ``images``, ``image_ids``, optional ``device``) adds ``overlays.png``: every
    model's masks on those images beside their ground truth (:mod:`sam_distill.eval.gallery`).
    ``overlays`` may hold ``min_score``: the instance models' detections drawn (default
    :data:`OVERLAY_MIN_SCORE`). ``teacher_runs`` pairs runs for "Heavy vs light" (see :func:`heavy_vs_light`).
    Inputs that hold no run are notes when others do; when none does there is nothing to report, which is one
    sentence rather than an empty report."""
    if not any(holds_run(p) for p in run_dirs):
        raise DistillError(f"{', '.join(str(p) for p in run_dirs)}: no run to report (a run folder has config.yaml "
                           f"or reports/); give folders made by `distill run`, or `distill bench --out` JSON files")
    notes: list[str] = []
    rows: list[dict] = []
    for run_dir in run_dirs:
        if holds_run(run_dir):
            rows.extend(collect_run(Path(run_dir), notes))
        else:
            notes.append(f"{run_dir}: {'holds no run' if Path(run_dir).exists() else 'does not exist'}; skipped")
    metric = choose_metric(rows)
    entries, hv_notes = heavy_vs_light(rows, metric, teacher_runs)
    notes += hv_notes
    unplotted = [r["model"] for r in rows if metric and r.get(metric) is None]
    if unplotted:
        notes.append(f"not on the plot (no {METRICS[metric]}): {', '.join(unplotted)}")
    if metric is None:
        notes.append("no accuracy figures: give `distill bench --cache` or a run with fidelity/metrics files")
    for row in rows:
        if row.get("kind") == "random-init":
            notes.append(f"{row['model']}: random weights; its latency is the architecture's, it has no accuracy")
    for key, label in (("total_method", "total p50/p90"), ("peak_mem_method", "peak mem")):
        notes += [f"{label}: {method}" for method in sorted({r[key] for r in rows if r.get(key)})]
    gallery_png = None
    if overlays:
        from sam_distill.eval.gallery import build_gallery

        min_score = overlays.get("min_score", OVERLAY_MIN_SCORE)
        gallery = build_gallery(overlay_models(rows), overlays["annotations"], overlays["images"],
                                overlays["image_ids"], Path(out_dir) / "overlays.png", overlays.get("device", "cpu"),
                                min_score=min_score, log=log)
        notes += [f"overlays: {c['label']}: no masks ({c['error']})" for c in gallery["columns"] if "error" in c]
        gallery_png = (Path(out_dir) / "overlays.png").read_bytes()
    refs = reference_rows()
    png = plot_pareto(rows, refs, metric)
    machines = sorted({r.get("machine") for r in rows if r.get("machine")})
    results = {"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "accuracy_metric": metric, "machines": machines,
               "rows": rows, "heavy_vs_light": entries, "reference": refs, "notes": notes}

    sections = [("Measured here", _measured_table(rows), ""),
                ("Heavy vs light", _heavy_light_table(entries, metric),
                 "Speed-up = teacher p50 / model p50 on the same machine; share kept = model / teacher accuracy."),
                ("Published reference rows (QUOTED, NOT MEASURED HERE)", _reference_table(refs),
                 "Other hardware and protocols: compare shapes, not numbers. FPS converted to ms as 1000/FPS.")]
    md = ["# sam-distill report", "", f"Generated {results['generated']}. Machine(s): {'; '.join(machines) or '-'}.",
          f"Accuracy axis: {METRICS[metric] if metric else 'none'}.", "", "![accuracy vs latency](pareto.png)", ""]
    for title, (head, body), caption in sections:
        md += [f"## {title}", "", *([caption, ""] if caption else []), _markdown_table(head, body)]
    if gallery_png is not None:
        md += ["## Masks on the same images", "", overlays_caption(min_score), "", "![masks of every model](overlays.png)", ""]
    md += ["## Notes", ""]
    md += [f"- {n}" for n in notes] or ["- none"]

    body_html = [f"<h1>sam-distill report</h1><p>Generated {html.escape(results['generated'])}. Machine(s): "
                 f"{html.escape('; '.join(machines) or '-')}.</p>",
                 f'<h2>Accuracy vs latency</h2><img id="pareto" alt="accuracy vs latency" '
                 f'src="data:image/png;base64,{base64.b64encode(png).decode()}">']
    for title, (head, body), caption in sections:
        cls = ' class="quoted"' if "QUOTED" in title else ""
        body_html.append(f"<section{cls}><h2>{html.escape(title)}</h2><p>{html.escape(caption)}</p>"
                         f"{_html_table(head, body)}</section>")
    if gallery_png is not None:
        body_html.append(f"<h2>Masks on the same images</h2><p>{html.escape(overlays_caption(min_score))}</p>"
                         f'<img id="overlays" alt="masks of every model" '
                         f'src="data:image/png;base64,{base64.b64encode(gallery_png).decode()}">')
    body_html.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes or ["none"]) + "</ul>")
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sam-distill report</title>'
            f"<style>{CSS}</style></head><body>{''.join(body_html)}</body></html>")

    out_dir = Path(out_dir)
    atomic_write_bytes(out_dir / "pareto.png", png)
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "report.md", "\n".join(md) + "\n")
    atomic_write_text(out_dir / "report.html", page)
    for note in notes:
        log(f"report: {note}")
    log(f"report: {out_dir}/report.md, report.html, results.json, pareto.png"
        + (", overlays.png" if gallery_png is not None else ""))
    return results


def run_models(run_dir: Path, config) -> tuple[Path | None, list[Path]]:
    """A run's teacher checkpoint (when it is a local file) and every model file it wrote or exported."""
    from sam_distill.sam.official import TEACHERS, checkpoint_cache_dir

    spec = config.teacher
    if spec.random_init:
        teachers = sorted((run_dir / "teacher").glob("*.pth"))
    elif spec.checkpoint is not None:
        teachers = [Path(spec.checkpoint)]
    else:
        official = checkpoint_cache_dir() / TEACHERS.get(spec.name).filename if spec.name in TEACHERS else None
        teachers = [official] if official is not None and official.exists() else []
    produced = [p for folder in ("model", "export")
                for p in sorted((run_dir / folder).rglob("*"), key=lambda p: (p.parent, p.name != "model.pt", p.name))
                if p.suffix in (".pt", ".pth", ".onnx") and p.is_file()]
    return (teachers[0] if teachers else None), produced  # our model.pt ahead of its copies: its row stands for both


def report_run(run_dir, config, runs: int = 3, log=print) -> dict | None:
    """What ``distill run`` calls last: a light bench of the run's models (3 runs), then the report. Files holding
    the same weights (``model.pt`` and its ``mobile_sam.pt`` copy) are one row, named in its notes.

    A report problem is logged as one line; it never undoes the finished run.
    """
    import torch

    from sam_distill.eval.bench import bench_many

    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return None
    run_dir = Path(run_dir)
    reports = run_dir / "reports"
    try:
        teacher, produced = run_models(run_dir, config)
        specs = [str(m) for m in ([teacher] if teacher else []) + produced]
        # A teacher file run at another size than its own (teacher.image_size) is timed at the size it taught at,
        # beside students made at that size; SAM files, their exports and YOLO networks alike take it or keep theirs.
        run_size = config.teacher.image_size if config.teacher.checkpoint is not None else None
        bench = bench_many(specs, runs=runs, warmup=1, threads=torch.get_num_threads(), log=log,
                           image_size=run_size, teacher=str(teacher) if teacher else None)
        atomic_write_json(reports / "bench.json", bench)
        return build_report([run_dir], reports, log=log)
    except DistillError as err:
        log(f"report: not written: {err}")
        return None
