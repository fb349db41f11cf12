"""GSM8K: grade-school math, 8-shot chain of thought, exact match of the final number (paper, Table 2).

Runs lm-eval's shipped ``gsm8k_cot`` task (see ``tasks/srt_gsm8k.yaml``) and reports both of its
answer extractions: ``strict_match`` (the answer must follow "The answer is") and
``flexible_extract`` (the last number in the generation).

Settings (all optional)::

    gsm8k:
      data_files: my_gsm8k.jsonl   # {"question", "answer": "... #### 42"} per line; default: shipped fixture (12)
      hub: false                   # true: lm-eval's `gsm8k_cot` on openai/gsm8k (1,319 problems; needs network)
      num_fewshot: 8               # default: the task's 8 CoT exemplars
      limit: null                  # first N problems only
      max_gen_toks: null           # default: lm-eval's 256
      answer_mode: null            # plain | srt | gated (default: the model's)
      apply_chat_template: false   # plain mode: wrap lm-eval's prompt in the chat template
      cache: true                  # reuse generations cached by earlier runs (same model, prompts, settings)

In ``srt`` answer mode the prompt lm-eval builds is the user message, the model answers with
response -> feedback -> refinement under its own sampling settings (``max_new_tokens`` covers the
whole SRT turn; ``max_gen_toks`` does not apply) and the refinement, cut at the task's stop
sequences, is scored.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from srt.errors import ConfigError

from .lm_eval_bridge import LmEvalBenchmark, LmEvalSettings, RenderedTasks, render_tasks, resolve_data_file

TASK = "gsm8k_cot"


class GSM8KSettings(LmEvalSettings):
    """``benchmarks: {gsm8k: {...}}`` (unknown keys are an error)."""

    data_files: str | dict[str, str] | None = Field(
        None,
        description='A JSONL of {"question", "answer": "... #### 42"} (or {test: path}), a path or a file name in the '
        "shipped data folder; None: the shipped 12-problem fixture",
    )
    num_fewshot: int | None = Field(None, ge=0, description="None: the task's 8 chain-of-thought exemplars")


class GSM8KBenchmark(LmEvalBenchmark):
    name = "gsm8k"
    template = "srt_gsm8k.yaml"
    settings_model = GSM8KSettings

    def tasks(self, out_dir: Path) -> RenderedTasks:
        files = self.settings["data_files"]
        if files is None or self.settings["hub"]:
            return render_tasks(self.template, out_dir, hub=self.settings["hub"])
        if isinstance(files, dict):
            if set(files) != {"test"}:
                raise ConfigError(
                    f"benchmark 'gsm8k': data_files takes a path or {{test: path}}, got keys {sorted(files)}"
                )
            files = files["test"]
        test = resolve_data_file(files, "benchmark 'gsm8k' data_files")
        return render_tasks(self.template, out_dir, data_files={TASK: {"test": test}})

    def summarize(self, per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        metrics = per_task[TASK]
        names = ("strict_match", "flexible_extract", "strict_match_stderr", "flexible_extract_stderr")
        return {k: metrics[k] for k in names if k in metrics}
