"""Model cards: the README.md of every exported model and adapter folder.

A card says what the weights are (base model, stage, data, critic, the settings that matter), how
they answer (response -> feedback -> refinement, and how to take the refinement out), what is known
of their quality (eval results, when there are some), and the method's citation. It is what the
Hugging Face hub shows, so the YAML front matter uses the hub's keys (``base_model``, ``library_name``,
``tags``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from srt.io import atomic_write_text

CITATION = """@inproceedings{hu2024teaching,
  title     = {Teaching Language Models to Self-Improve by Learning from Language Feedback},
  author    = {Hu, Chi and Hu, Yimin and Cao, Hang and Xiao, Tong and Zhu, Jingbo},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2024},
  year      = {2024},
  note      = {arXiv:2406.07168}
}"""

USAGE = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from srt.critic_template import parse_srt_output

tokenizer = AutoTokenizer.from_pretrained("{path}")
model = AutoModelForCausalLM.from_pretrained("{path}")
prompt = tokenizer.apply_chat_template([{{"role": "user", "content": "Your question"}}],
                                       add_generation_prompt=True, return_tensors="pt")
text = tokenizer.decode(model.generate(prompt, max_new_tokens=1024)[0, prompt.shape[1]:], skip_special_tokens=True)
answer = parse_srt_output(text).answer   # the refinement; the first response when the output does not parse
```

Or with srt: `srt-eval generate --model {path} --input questions.jsonl --output answers.jsonl --mode srt`."""


def original_model_id(configured: str, resolved: str) -> str:
    """The name a user knows the base model by: a hub id or built-in name as configured, not the
    cache folder it resolved to (a local folder the user named stays that folder)."""
    return configured if Path(configured).expanduser().resolve() != Path(resolved).expanduser().resolve() else resolved


def set_adapter_base(adapter_dir: Path, base_model: str) -> None:
    """Point an adapter's ``base_model_name_or_path`` at ``base_model`` (peft writes the path it loaded)."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        return
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("base_model_name_or_path") != base_model:
        config["base_model_name_or_path"] = base_model
        atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _yaml_list(items: list[str]) -> str:
    return "".join(f"\n  - {item}" for item in items)


def render_model_card(
    *,
    kind: str,
    stage: int,
    base_model: str,
    run_name: str,
    data: dict[str, Any],
    critic: dict[str, Any] | None,
    settings: dict[str, Any],
    weights: str,
    eval_results: dict[str, Any] | None = None,
    path_hint: str = "PATH",
) -> str:
    """``kind``: "model" (full or merged weights) or "adapter" (LoRA)."""
    what = {1: "stage 1 (SFT on critic feedback)", 2: "stage 2 (DPO on self-feedback pairs)"}.get(
        stage, f"stage {stage}"
    )
    lines = [
        "---",
        f"base_model: {base_model}",
        f"library_name: {'peft' if kind == 'adapter' else 'transformers'}",
        "tags:" + _yaml_list(["srt", "self-refinement-tuning", "sft" if stage == 1 else "dpo"]),
        "---",
        "",
        f"# {run_name}: {what}",
        "",
        f"Trained with [srt](https://arxiv.org/abs/2406.07168) (Self-Refinement Tuning) from `{base_model}`. "
        f"This folder holds {weights}.",
        "",
        "## How it answers",
        "",
        "In one assistant turn the model writes a response, then `### Feedback` (weaknesses, suggestions, "
        "`Overall Score: [[n]]`), then `### Improved Response` and the refinement. **The refinement is the "
        "answer**; fall back to the response when the output does not parse:",
        "",
        USAGE.format(path=path_hint),
        "",
        "## Training",
        "",
        "| | |",
        "| --- | --- |",
        f"| stage | {what} |",
        f"| base model | `{base_model}` |",
    ]
    for name, value in data.items():
        lines.append(f"| {name} | {value} |")
    if critic:
        model = f" ({critic['model']})" if critic.get("model") else ""
        lines.append(f"| critic | `{critic.get('name')}`{model} |")
    for key, value in settings.items():
        lines.append(f"| `{key}` | `{json.dumps(value, default=str)}` |")
    lines += ["", "## Evaluation", ""]
    if eval_results:
        lines += ["| benchmark | metric | value |", "| --- | --- | --- |"]
        lines += [f"| {b} | {m} | {v} |" for b, metrics in eval_results.items() for m, v in metrics.items()]
    else:
        lines.append("Not evaluated yet: `srt-eval run --model THIS_FOLDER --benchmarks ...` (see the srt README).")
    lines += ["", "## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, **fields: Any) -> Path:
    path = Path(folder) / "README.md"
    atomic_write_text(path, render_model_card(path_hint=str(folder), **fields))
    return path
