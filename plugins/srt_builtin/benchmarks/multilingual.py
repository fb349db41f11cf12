"""Multilingual benchmarks through lm-eval: TyDi QA GoldP (the paper's) and MGSM.

Both run lm-eval's shipped per-language tasks over local JSONL data (templates in ``tasks/``) and
report every metric per language (``<lang>/<metric>``) and its plain mean over the languages run
(``<metric>``): each language counts the same, whatever its number of documents.

Settings shared with ``gsm8k`` (see :mod:`srt_builtin.benchmarks.gsm8k`): ``hub``, ``num_fewshot``,
``limit`` (documents per language), ``max_gen_toks``, ``answer_mode``, ``batch_size``,
``apply_chat_template``, ``cache``; plus ``languages`` and the ``data_files`` below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srt.errors import ConfigError

from .lm_eval_bridge import LmEvalBenchmark, LmEvalSettings, RenderedTasks, mean, render_tasks, resolve_data_file


class TyDiQASettings(LmEvalSettings):
    """``benchmarks: {tydiqa: {...}}`` (unknown keys are an error)."""

    data_files: dict[str, str] | None = Field(
        None,
        description="{train: path, validation: path} in the hub's secondary_task layout (id, title, context, question, "
        "answers); None: the shipped fixtures",
    )
    num_fewshot: int | None = Field(1, ge=0, description="Exemplars from the same language (the Tulu-2 protocol: 1)")
    languages: list[str] | str | None = Field(None, description="GoldP language codes; None: all nine")


class MGSMSettings(LmEvalSettings):
    """``benchmarks: {mgsm: {...}}`` (unknown keys are an error)."""

    data_files: dict[str, str] | None = Field(
        None, description="{language: path} of {question, answer, answer_number} rows; None: the shipped fixtures"
    )
    languages: list[str] | str | None = Field(
        None, description="Language codes; None: the shipped fixtures' languages (with hub: true, all 11)"
    )
    variant: Literal["native_cot", "direct"] = Field(
        "native_cot", description="native_cot: chain of thought in the question's language; direct: the number only"
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="0-shot locally (no local exemplars); with hub: true, from its train split"
    )


def _languages(benchmark: str, value: Any, known: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"benchmark {benchmark!r}: languages must be a non-empty list of codes, got {value!r}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(f"benchmark {benchmark!r}: unknown language(s) {unknown}; known: {known}")
    return list(dict.fromkeys(value))


def _per_language(
    per_task: dict[str, dict[str, float]], language_of: dict[str, str], names: list[str]
) -> dict[str, float]:
    """``<lang>/<metric>`` for every task and metric, then the mean over languages of each metric."""
    metrics: dict[str, float] = {}
    for task, values in per_task.items():
        for name in names:
            if name in values:
                metrics[f"{language_of[task]}/{name}"] = values[name]
    for name in names:
        values = [per_task[task][name] for task in per_task if name in per_task[task]]
        if values:
            metrics[name] = mean(values)
    return metrics


class TyDiQABenchmark(LmEvalBenchmark):
    """TyDi QA GoldP, 1-shot (Tulu-2 protocol): F1 and exact match per language and averaged.

    Settings::

        tydiqa:
          languages: [ar, bn, en, fi, id, ko, ru, sw, te]   # default: all nine GoldP languages
          data_files: {train: my_train.jsonl, validation: my_dev.jsonl}   # default: shipped fixtures
          num_fewshot: 1          # the exemplar comes from the same language (lm-eval's process_docs)
          hub: false              # true: google-research-datasets/tydiqa (secondary_task; needs the network)
    """

    name = "tydiqa"
    template = "srt_tydiqa.yaml"
    LANGUAGES = ["ar", "bn", "en", "fi", "id", "ko", "ru", "sw", "te"]
    settings_model = TyDiQASettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        langs = self.settings["languages"]
        self.languages = self.LANGUAGES if langs is None else _languages(self.name, langs, self.LANGUAGES)

    def task_name(self, lang: str) -> str:
        return f"tydiqa_goldp_{lang}"

    def tasks(self, out_dir: Path) -> RenderedTasks:
        names = [self.task_name(lang) for lang in self.languages]
        files = self.settings["data_files"]
        given: dict[str, dict[str, Path]] = {}
        if files is not None and not self.settings["hub"]:
            if not isinstance(files, dict) or not set(files) <= {"train", "validation"} or not files:
                raise ConfigError(
                    f"benchmark 'tydiqa': data_files takes {{train: path, validation: path}}, got {files!r}"
                )
            paths = {
                split: resolve_data_file(p, f"benchmark 'tydiqa' data_files.{split}") for split, p in files.items()
            }
            given = {name: paths for name in names}
        return render_tasks(self.template, out_dir, tasks=names, data_files=given, hub=self.settings["hub"])

    def task_extra(self, task: str) -> dict[str, Any]:
        return {"language": task.rsplit("_", 1)[1]}

    def summarize(self, per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        language_of = {self.task_name(lang): lang for lang in self.languages}
        return _per_language(per_task, language_of, ["f1", "exact_match"])


class MGSMBenchmark(LmEvalBenchmark):
    """MGSM: exact match of the final number per language and averaged (lm-eval's answer filters).

    Settings::

        mgsm:
          variant: native_cot      # native_cot (chain of thought in the question's language) | direct
          languages: [en, de, fr, es, zh, ja, ru, sw]   # default: the shipped fixtures (hub: all 11)
          data_files: {de: my_de.jsonl}   # per language; default: shipped fixtures mgsm_<lang>.jsonl
          hub: false               # true: juletxara/mgsm (250 problems per language; needs the network)
          num_fewshot: null        # 0-shot locally (no local exemplars); with hub: true, from its train split

    Metrics: native_cot: ``strict_match`` ("Die Antwort lautet 12") and ``flexible_extract`` (last
    number); direct: ``remove_whitespace`` (the answer is the number) and ``flexible_extract``.
    """

    name = "mgsm"
    VARIANTS = {"native_cot": "srt_mgsm_native_cot.yaml", "direct": "srt_mgsm_direct.yaml"}
    LANGUAGES = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]
    FIXTURE_LANGUAGES = ["en", "de", "fr", "es", "zh", "ja", "ru", "sw"]
    METRICS = ["strict_match", "remove_whitespace", "flexible_extract"]
    settings_model = MGSMSettings

    def __init__(self, **settings: Any):
        super().__init__(**settings)
        self.template = self.VARIANTS[self.settings["variant"]]
        files = self.settings["data_files"]
        langs = self.settings["languages"]
        if langs is None:
            langs = self.LANGUAGES if self.settings["hub"] else sorted({*self.FIXTURE_LANGUAGES, *(files or {})})
        self.languages = _languages(self.name, langs, self.LANGUAGES)
        if not self.settings["hub"] and (self.settings["num_fewshot"] or 0) > 0:
            raise ConfigError(
                "benchmark 'mgsm': num_fewshot > 0 needs exemplars, which local data does not have; "
                "use hub: true (juletxara/mgsm train split) or num_fewshot: 0"
            )

    def task_name(self, lang: str) -> str:
        return f"mgsm_{self.settings['variant']}_{lang}"

    def tasks(self, out_dir: Path) -> RenderedTasks:
        return self.render_per_part(out_dir, self.languages, self.settings["data_files"] or {}, "language")

    def task_extra(self, task: str) -> dict[str, Any]:
        return {"language": task.rsplit("_", 1)[1]}

    def summarize(self, per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        language_of = {self.task_name(lang): lang for lang in self.languages}
        return _per_language(per_task, language_of, self.METRICS)
