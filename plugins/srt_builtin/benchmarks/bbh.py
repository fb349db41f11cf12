"""BBH (BIG-Bench Hard): 27 reasoning subtasks, 3-shot chain of thought, exact match (paper, Table 3).

Runs lm-eval's shipped ``bbh_cot_fewshot_<subtask>`` tasks (see ``tasks/srt_bbh.yaml``): their
description and prompt ("Q: ...\\nA: Let's think step by step."), the 3 CoT exemplars of the BBH
paper written into the task YAMLs, the stop sequences, the ``get-answer`` filter (the text after
"the answer is") and exact match stay lm-eval's. Reports exact match per subtask
(``<subtask>/exact_match``, with its standard error) and the plain mean over the subtasks run
(``exact_match``): each subtask counts the same, whatever its number of documents (lm-eval's own
group score weights by size instead).

Settings (all optional)::

    bbh:
      subtasks: [boolean_expressions, sports_understanding]   # default: all 27 with hub: true;
                                   # locally, the subtasks that have data (data_files, else the fixtures)
      data_files: {navigate: my_navigate.jsonl}   # per subtask, {"input", "target"} rows (the hub's layout);
                                   # default: the shipped fixtures (boolean_expressions, sports_understanding)
      hub: false                   # true: lm-eval's tasks on SaylorTwift/bbh, as lm-eval loads it (needs network)
      num_fewshot: null            # default: the tasks' 3 CoT exemplars
      limit: null                  # first N documents per subtask
      max_gen_toks: null           # default: lm-eval's task setting (1024)
      answer_mode: null            # plain | srt | gated (default: the model's)
      apply_chat_template: false   # plain mode: wrap lm-eval's prompt in the chat template
      cache: true                  # reuse generations cached by earlier runs

In ``srt`` answer mode the prompt lm-eval builds is the user message and the refinement, cut at the
task's stop sequences, is scored (as for ``gsm8k``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from srt.errors import ConfigError

from .lm_eval_bridge import LmEvalBenchmark, LmEvalSettings, RenderedTasks, mean

PREFIX = "bbh_cot_fewshot_"
SUBTASKS = [
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
]
FIXTURE_SUBTASKS = ["boolean_expressions", "sports_understanding"]
# lm-eval's exact match after its `get-answer` filter (lm_eval_bridge.metric_name of "exact_match,get-answer").
FILTERED = "get_answer"


class BBHSettings(LmEvalSettings):
    """``benchmarks: {bbh: {...}}`` (unknown keys are an error)."""

    data_files: dict[str, str] | None = Field(
        None,
        description='{subtask: path} of {"input", "target"} rows (the hub\'s layout), a path or a file name in the '
        "shipped data folder; None: the shipped fixtures (boolean_expressions, sports_understanding)",
    )
    subtasks: list[str] | str | None = Field(
        None,
        description="BBH subtask names (e.g. `navigate`); None: all 27 with hub: true, locally the subtasks that "
        "have data (data_files, else the shipped fixtures)",
    )
    num_fewshot: int | None = Field(None, ge=0, description="None: the tasks' 3 chain-of-thought exemplars")


def _subtasks(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"benchmark 'bbh': subtasks must be a non-empty list of names, got {value!r}")
    value = [v.removeprefix(PREFIX) for v in value]
    unknown = sorted(set(value) - set(SUBTASKS))
    if unknown:
        raise ConfigError(f"benchmark 'bbh': unknown subtask(s) {unknown}; known: {SUBTASKS}")
    return list(dict.fromkeys(value))


class BBHBenchmark(LmEvalBenchmark):
    name = "bbh"
    template = "srt_bbh.yaml"
    settings_model = BBHSettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        files = self.settings["data_files"]
        chosen = self.settings["subtasks"]
        if chosen is None:
            chosen = SUBTASKS if self.settings["hub"] else [s for s in SUBTASKS if s in (files or FIXTURE_SUBTASKS)]
        self.subtasks = _subtasks(chosen)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "subtasks": self.subtasks}

    def task_name(self, subtask: str) -> str:
        return f"{PREFIX}{subtask}"

    def tasks(self, out_dir: Path) -> RenderedTasks:
        files = {k.removeprefix(PREFIX): v for k, v in (self.settings["data_files"] or {}).items()}
        return self.render_per_part(out_dir, self.subtasks, files, "subtask")

    def task_extra(self, task: str) -> dict[str, Any]:
        return {"subtask": task.removeprefix(PREFIX)}

    def summarize(self, per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for sub in self.subtasks:
            values = per_task.get(self.task_name(sub), {})
            if FILTERED in values:
                metrics[f"{sub}/exact_match"] = values[FILTERED]
            if f"{FILTERED}_stderr" in values:
                metrics[f"{sub}/exact_match_stderr"] = values[f"{FILTERED}_stderr"]
        scores = [metrics[f"{sub}/exact_match"] for sub in self.subtasks if f"{sub}/exact_match" in metrics]
        if scores:
            metrics["exact_match"] = mean(scores)
        return metrics
