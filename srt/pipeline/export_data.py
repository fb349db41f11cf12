"""``srt-train export RUN_DIR --format ...``: a run's training data in the formats TRL trains on.

* ``sft-messages``: stage-1 records as conversations, ``{"messages": [system?, user, assistant]}``, the
  assistant turn being the whole SRT turn (response -> feedback -> refinement; or what the run's
  ``sft.ablation`` trains). TRL's ``SFTTrainer`` applies the chat template itself.
* ``prompt-completion``: the same examples as ``{"prompt": <chat-formatted prompt>, "completion": <SRT
  turn + end of turn>}``, the prompt already rendered with the model's chat template (TRL does not
  template plain strings), so ``completion_only_loss`` trains exactly what srt trains.
* ``preference``: stage-2 pairs as ``{"prompt": <chat-formatted prompt>, "chosen", "rejected"}`` for
  ``DPOTrainer`` (chosen = refinement, rejected = the initial response), plus the scores.

Each is written as JSONL (``<out>/<format>.jsonl``) and as a ``datasets.save_to_disk`` folder
(``<out>/<format>/``), with the run's manifest settings that shaped it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srt.config import RunConfig
from srt.errors import ConfigError
from srt.io import atomic_write_json, read_json

FORMATS = ("sft-messages", "prompt-completion", "preference")


def _run_config(run_dir: Path) -> RunConfig:
    manifest = read_json(run_dir / "manifest.json", default=None) or read_json(run_dir / "stage1" / "manifest.json")
    if not manifest or "config" not in manifest:
        raise ConfigError(f"{run_dir} is not an srt run directory (no manifest.json with a config)")
    return RunConfig.model_validate(manifest["config"])


def _sft_rows(run_dir: Path, cfg: RunConfig, fmt: str) -> list[dict[str, Any]]:
    from srt.data.chat_format import ChatFormat
    from srt.data.segments import Unusable, sft_segments
    from srt.models import load_tokenizer, resolve_model_path
    from srt.records import FeedbackRecord, read_jsonl

    records_path = run_dir / "stage1" / "records.jsonl"
    if not records_path.is_file():
        raise ConfigError(f"no stage-1 records at {records_path}: run stage 1 first")
    chat = ChatFormat(load_tokenizer(resolve_model_path(cfg.model.path)), cfg.model.system_prompt)
    rows = []
    for record in read_jsonl(records_path, FeedbackRecord, allow_empty=False):
        try:
            segments = sft_segments(record, cfg.sft, chat)  # exactly the pieces srt trains on
        except Unusable:
            continue
        turn = "".join(text for name, text, _ in segments if name not in ("prompt", "eos"))
        if fmt == "sft-messages":
            context = [m.model_dump() for m in record.context]
            own_system = cfg.model.system_prompt and not any(m["role"] == "system" for m in context)
            system = [{"role": "system", "content": cfg.model.system_prompt}] if own_system else []
            messages = [
                *system,
                *context,
                {"role": "user", "content": record.instruction},
                {"role": "assistant", "content": turn},
            ]
            rows.append({"id": record.id, "messages": messages})
        else:
            rows.append(
                {
                    "id": record.id,
                    "prompt": chat.prompt(record.instruction, record.context),
                    "completion": turn + chat.end_of_turn,
                }
            )
    return rows


def _preference_rows(run_dir: Path, cfg: RunConfig) -> list[dict[str, Any]]:
    from srt.data.chat_format import ChatFormat
    from srt.models import load_tokenizer
    from srt.records import PreferencePair, read_jsonl

    pair_files = sorted((run_dir / "stage2").glob("round*/pairs.jsonl"))
    if not pair_files:
        raise ConfigError(f"no stage-2 pairs under {run_dir / 'stage2'}: run stage 2 first")
    chat = ChatFormat(load_tokenizer(str(run_dir / "stage1" / "model")), cfg.model.system_prompt)
    rows = []
    for path in pair_files:
        for pair in read_jsonl(path, PreferencePair):
            rows.append(
                {
                    "id": pair.id,
                    "prompt": chat.prompt(pair.prompt, pair.context),
                    "chosen": pair.chosen,
                    "rejected": pair.rejected,
                    "chosen_score": pair.chosen_score,
                    "rejected_score": pair.rejected_score,
                    "round": pair.round,
                }
            )
    return rows


def export_dataset(run_dir: str | Path, fmt: str, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Write ``fmt`` for the run at ``run_dir``; returns where and how many rows."""
    import datasets

    from srt.records import write_jsonl_atomic

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "export"
    rows = _preference_rows(run_dir, cfg) if fmt == "preference" else _sft_rows(run_dir, cfg, fmt)
    if not rows:
        raise ConfigError(f"{run_dir}: nothing to export as {fmt}")
    jsonl = out / f"{fmt}.jsonl"
    write_jsonl_atomic(jsonl, rows)
    folder = out / fmt
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    info = {
        "format": fmt,
        "rows": len(rows),
        "jsonl": str(jsonl),
        "dataset": str(folder),
        "run": str(run_dir),
        "model": cfg.model.path,
        "system_prompt": cfg.model.system_prompt,
        "ablation": cfg.sft.ablation,
    }
    atomic_write_json(out / f"{fmt}.json", info)
    return info
