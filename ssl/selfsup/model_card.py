"""The model card (``README.md``) of an export, in the Hugging Face Hub's format.

YAML front matter (``library_name: timm``, ``tags``, ``license`` when ``export.license`` is set,
``pipeline_tag: image-feature-extraction``) and a body a receiver of the folder reads: the architecture, the
method and its key settings, the data it saw (sample counts and the shard source's name, never a local path),
steps and images/s, the collapse signals at the exported step, and how to load it in timm and transformers.

The facts come from the run folder: ``summary.json`` (written at the end of ``selfsup pretrain``), the
checkpoint's ``train_state_0.json`` and ``metrics.jsonl``; a run killed before its summary still gets a card
from the other two. ``selfsup-eval report --update-card`` later fills the evaluation section between
:data:`EVAL_START` and :data:`EVAL_END` (:func:`set_card_section`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from selfsup import registry
from selfsup.config import Config
from selfsup.train.report import collapse_signals

CARD_FILE = "README.md"
METRICS_FILE = "metrics.jsonl"
EVAL_START = "<!-- selfsup-eval report: start -->"
EVAL_END = "<!-- selfsup-eval report: end -->"


def paper(method: str) -> tuple[str, str] | None:
    """(title, arXiv id) of ``method.name``'s paper (its spec's ``paper``): the Hub links ``arxiv:`` tags to the
    paper page. None for a method without one, or one this version no longer registers."""
    spec = registry.specs().get(method)
    return spec.paper if spec is not None else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` (unparsable lines, e.g. one cut by a kill, are skipped)."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                records.append(rec)
    return records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def source_name(shards: str) -> str:
    """The name of a shard source (folder, brace pattern, list file or URL) without the path leading to it."""
    return Path(shards.rstrip("/")).name or shards


def training_facts(run_dir: Path, checkpoint: Path, step: int | None, cfg: Config) -> dict[str, Any]:
    """What the card reports about training, from the run's files (missing files leave their facts out).

    Returns:
        ``steps``, ``total_steps``, ``global_batch``, ``samples_seen``, ``samples_per_epoch``, ``num_shards``,
        ``images_per_s``, ``final`` (the last metrics record at or before ``step``).
    """
    summary = _read_json(run_dir / "summary.json")
    state = _read_json(checkpoint / "train_state_0.json")
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if step is None or r.get("step", 0) <= step]
    global_batch = state.get("global_batch") or summary.get("global_batch")
    speeds = [r["images_per_s"] for r in records if isinstance(r.get("images_per_s"), (int, float))]
    # summary.json's speed is the last session's average; without one, the mean of the logged windows
    images_per_s = summary.get("images_per_s") or (sum(speeds) / len(speeds) if speeds else None)
    samples_per_epoch = summary.get("samples_per_epoch") or cfg.data.samples_per_epoch or (
        summary["steps_per_epoch"] * summary["global_batch"] if "steps_per_epoch" in summary else None)
    return {
        "steps": step,
        "total_steps": summary.get("total_steps"),
        "global_batch": global_batch,
        "samples_seen": step * global_batch if step is not None and global_batch else None,
        "samples_per_epoch": samples_per_epoch,
        "num_shards": summary.get("num_shards"),
        "images_per_s": images_per_s,
        "final": records[-1] if records else {},
    }


def front_matter(cfg: Config, license: str | None) -> dict[str, Any]:
    """The card's YAML metadata (Hub model card format)."""
    meta: dict[str, Any] = {"library_name": "timm"}
    if license:
        meta["license"] = license
    meta["pipeline_tag"] = "image-feature-extraction"
    tags = ["image-feature-extraction", "timm", "transformers", "self-supervised", "selfsup", cfg.method.name]
    cited = paper(cfg.method.name)
    if cited is not None:
        tags.append(f"arxiv:{cited[1]}")
    meta["tags"] = tags
    return meta


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _settings(obj: Any) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in dataclasses.asdict(obj).items())


def _count(n: int | float | None) -> str:
    return f"{int(n):,}" if n is not None else "unknown"


def _collapse_lines(final: dict[str, Any]) -> list[str]:
    loss = [f"- loss: {final['loss']:.4f}"] if "loss" in final else []
    return loss + [f"- {line}" for line in collapse_signals(final)]


def _initialisation(cfg: Config) -> str:
    init = getattr(cfg.model, "pretrained", False)
    if init is True:
        return f"starting from timm's published `{cfg.model.name}` weights (their terms apply too)"
    if init:
        return f"starting from the weights in `{source_name(str(init))}`"
    return "starting from random initialisation"


def render_card(config: dict[str, Any], cfg: Config, facts: dict[str, Any], *, license: str | None) -> str:
    """The card's text: front matter and body.

    Args:
        config: the export's ``config.json`` (architecture, model_args, pretrained_cfg, selfsup block).
        cfg: the run's resolved config.
        facts: :func:`training_facts`.
        license: ``export.license`` (None: the card states no license).
    """
    sb, pcfg = config["selfsup"], config["pretrained_cfg"]
    arch, method = config["architecture"], cfg.method.name
    title = (paper(method) or (method, ""))[0]
    args = ", ".join(f"{k}={_fmt(v)}" for k, v in (config.get("model_args") or {}).items())
    size = pcfg["input_size"]
    v = cfg.views
    views = f"{v.n_global} global crops of {v.global_crop_size} px (scale {_fmt(v.global_crop_scale)})"
    if v.n_local:
        views += f" + {v.n_local} local crops of {v.local_crop_size} px (scale {_fmt(v.local_crop_scale)})"
    views += f"; blur probabilities {_fmt(v.blur_probs)}, solarization {_fmt(v.solarize_prob)}"
    steps = facts["steps"]
    epochs = (f" (about {facts['samples_seen'] / facts['samples_per_epoch']:.3g} epochs)"
              if facts["samples_seen"] and facts["samples_per_epoch"] else "")
    shards = f", {facts['num_shards']} shard files" if facts["num_shards"] else ""
    total = f" of {facts['total_steps']} scheduled" if facts["total_steps"] and facts["total_steps"] != steps else ""
    speed = f"{facts['images_per_s']:.1f} images/s" if facts["images_per_s"] else "unknown images/s"
    name = sb.get("run") or arch
    lines = [
        "---", yaml.safe_dump(front_matter(cfg, license), sort_keys=False).rstrip(), "---", "",
        f"# {name}: {method} {arch}", "",
        f"A `{arch}` backbone pretrained with {title}, self-supervised (no labels), with selfsup, "
        f"{_initialisation(cfg)}. Weights tag `{pcfg['tag']}`"
        + (f", license `{license}`." if license else "; no license was stated by its author (`export.license`)."),
        "",
        "## Model", "",
        f"- architecture: timm `{arch}`" + (f" with `{args}`" if args else ""),
        f"- exported encoder: {sb['encoder']} (`{sb['module']}` of the {method} model), no classifier head "
        f"(`num_classes=0`): the output is the {config.get('num_features', '?')}-d pooled feature",
        f"- input: {size[0]} x {size[1]} x {size[2]}, mean {_fmt(list(pcfg['mean']))}, std {_fmt(list(pcfg['std']))}, "
        f"{pcfg.get('interpolation', 'bicubic')} resize, crop_pct {_fmt(pcfg.get('crop_pct', 1.0))}",
        "",
        "## Training", "",
        f"- method: {method}; settings: {_settings(getattr(cfg.method, method))}",
        f"- views: {views}",
        f"- optimiser: AdamW, base lr {_fmt(cfg.optim.lr)} per 256 images, weight decay {_fmt(cfg.optim.weight_decay)}"
        f" -> {_fmt(cfg.optim.weight_decay_end)}, warmup {_fmt(cfg.optim.warmup_epochs)} epochs, "
        f"mixed precision {cfg.train.mixed_precision}",
        f"- data: shard source `{source_name(cfg.data.shards)}`{shards}, {_count(facts['samples_per_epoch'])} "
        f"samples per epoch",
        f"- steps: {steps}{total}, global batch {facts['global_batch'] or 'unknown'}, "
        f"{_count(facts['samples_seen'])} samples seen{epochs}",
        f"- speed: {speed}",
        f"- resolved config hash: `{sb['config_hash']}` (run `{sb.get('run')}`, checkpoint `{sb.get('checkpoint')}`)",
        "",
        f"## Collapse signals at step {facts['final'].get('step', steps)}", "",
        *(_collapse_lines(facts["final"]) or ["- not logged (no metrics.jsonl in the run folder)"]),
        "",
        "## Evaluation", "",
        EVAL_START,
        "Not evaluated yet: `selfsup-eval report --weights THIS_FOLDER --train ... --val ... --out DIR "
        "--update-card` puts its results table here.",
        EVAL_END,
        "",
        "## How to use", "",
        "With timm (from the Hub, or `local-dir:PATH` for this folder on disk):", "",
        "```python",
        "import timm, torch",
        'model = timm.create_model("hf-hub:USER/NAME", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))",
        "with torch.no_grad():",
        "    features = model(transform(image).unsqueeze(0))  # (1, num_features)",
        "```", "",
        "With transformers (>= 4.48: `TimmWrapperModel`):", "",
        "```python",
        "from transformers import AutoImageProcessor, AutoModel, pipeline",
        'processor = AutoImageProcessor.from_pretrained("USER/NAME")',
        'model = AutoModel.from_pretrained("USER/NAME").eval()',
        'features = model(**processor(image, return_tensors="pt")).pooler_output  # (1, num_features)',
        'extractor = pipeline("image-feature-extraction", model="USER/NAME")',
        "pooled = extractor(image, pool=True)  # [[num_features floats]]; without pool=True: every token",
        "```", "",
        "## Files", "",
        "- `model.safetensors`: the weights; `config.json`: timm architecture, model args, preprocessing "
        "(`pretrained_cfg`) and the `selfsup` block (method, encoder, step, config hash)",
        f"- `{METRICS_FILE}`: the pretraining log (one JSON record per logged step: loss, lr, collapse signals, "
        "images/s)" if facts.get("has_metrics") else None,
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def write_model_card(folder: Path, *, config: dict[str, Any], cfg: Config, run_dir: Path, checkpoint: Path,
                     license: str | None) -> Path:
    """Write ``folder/README.md`` and the run's ``metrics.jsonl`` (up to the exported step) next to it.

    The pretraining log travels with the weights so that the card's numbers can be checked and
    ``selfsup-eval report`` can plot the curves wherever the folder ends up.
    """
    step = config["selfsup"].get("step")
    facts = training_facts(run_dir, checkpoint, step, cfg)
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if step is None or r.get("step", 0) <= step]
    if records:
        (folder / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    facts["has_metrics"] = bool(records)
    path = folder / CARD_FILE
    path.write_text(render_card(config, cfg, facts, license=license))
    return path


def set_card_section(card: Path, body: str) -> None:
    """Put ``body`` between :data:`EVAL_START` and :data:`EVAL_END` of ``card`` (appended under a new
    ``## Evaluation`` heading when the markers are gone); everything else in the card is kept as it is."""
    text = card.read_text()
    block = f"{EVAL_START}\n{body.strip()}\n{EVAL_END}"
    start, end = text.find(EVAL_START), text.find(EVAL_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(EVAL_END):]
    else:
        text = text.rstrip("\n") + f"\n\n## Evaluation\n\n{block}\n"
    card.write_text(text)
