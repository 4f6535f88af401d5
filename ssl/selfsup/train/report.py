"""The short summary printed at the end of a pretraining run."""

from __future__ import annotations

from typing import Any


def format_summary(summary: dict[str, Any]) -> str:
    """Steps, speed, final loss and the collapse signals, in a few lines a person reads."""
    final = summary.get("final", {})
    lines = [
        f"pretrained {summary['method']} / {summary['model']}: {summary['steps']} steps "
        f"({summary['steps_this_run']} this run, global batch {summary['global_batch']}), "
        f"{summary['images_per_s']:.1f} images/s",
    ]
    if "loss" in final:
        lines.append(f"  final loss {final['loss']:.4f} at step {final['step']}")
    lines += [f"  collapse signal: {line}" for line in collapse_signals(final)]
    mon = summary.get("monitor")
    if mon:
        lines.append(f"  kNN monitor: best top-1 {mon['knn_top1_best']:.4f} at step {mon['best_step']} "
                     f"(checkpoints/best/; {mon['evals']} evaluations, {mon['seconds']:.1f} s)")
    skipped = summary.get("skipped_samples") or {}
    lines.append(f"  skipped samples: {sum(skipped.values())} {skipped if skipped else ''}".rstrip())
    if summary.get("bad_steps"):
        lines.append(f"  non-finite steps skipped: {summary['bad_steps']}")
    lines.append(f"  run dir: {summary['run_dir']} (metrics.jsonl, checkpoints/, config.yaml)")
    return "\n".join(lines)


def collapse_signals(record: dict[str, Any]) -> list[str]:
    """The collapse signals of a metrics record, one line each with the value that means collapse."""
    lines = []
    if "embed_std" in record:
        healthy = record.get("embed_std_healthy")
        hint = f" (healthy ~{healthy:.3f}, collapse -> 0)" if healthy else ""
        lines.append(f"student embedding std {record['embed_std']:.4f}{hint}")
    if "teacher_entropy" in record:
        lines.append(f"teacher entropy {record['teacher_entropy']:.3f} of max {record['teacher_entropy_max']:.3f}"
                     " (near 0 or near max = collapse)")
    return lines
