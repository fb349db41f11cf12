"""Shared plumbing for the benchmarks that run through lm-evaluation-harness (gsm8k, tydiqa, mgsm).

The tasks are data: each benchmark has a template in ``tasks/`` naming lm-eval's own shipped
tasks (``gsm8k_cot``, ``tydiqa_goldp_<lang>``, ``mgsm_native_cot_<lang>``...) and the keys that
point them at local documents (``dataset_path: json`` + ``data_files``). Prompts, few-shot
exemplars, stop sequences, answer filters and metrics stay lm-eval's. A run writes one lm-eval
task YAML per task to ``<output_dir>/lm_eval_tasks/`` (``include:`` of the shipped YAML plus the
local-data keys) and evaluates them with ``lm_eval.simple_evaluate`` and
``TaskManager(include_path=<that folder>)``; ``lm_eval --include_path <that folder>`` reproduces
it outside srt (the folder's README.md has the command).

Answer modes: ``plain`` is lm-eval's ``HFLM`` on the already-loaded model; ``srt`` is
:class:`SrtLM`, which answers lm-eval's ``generate_until`` requests with the SRT refinement
(response -> feedback -> refinement, the refinement is the answer) and leaves log-likelihood
requests to ``HFLM``; ``gated`` is :class:`SrtLM` answering with the gated refinement (the refinement
only when the model's own re-score of it beats its response's, else the response).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from srt.errors import ConfigError
from srt.eval.benchmark import ANSWER_MODES
from srt.eval.data import check_fields
from srt.io import file_sha256 as sha256_file
from srt.io import text_sha256 as sha256_bytes
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings

TASKS_DIR = Path(__file__).parent / "tasks"
DATA_DIR = Path(__file__).parent / "data"
RENDERED_DIR_NAME = "lm_eval_tasks"


# ---------------------------------------------------------------------------------------------
# Hashes, data files, offline datasets


def lm_eval_version() -> str:
    import lm_eval

    return getattr(lm_eval, "__version__", "unknown")


def resolve_data_file(value: str | os.PathLike, where: str) -> Path:
    """A data file named in a setting: an existing path, or a file name in the shipped ``data/`` folder."""
    path = Path(value).expanduser()
    for candidate in (path, DATA_DIR / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{where}: data file {str(value)!r} not found (neither as a path nor in {DATA_DIR})")


@contextlib.contextmanager
def datasets_offline() -> Iterator[None]:
    """Local JSON data never needs the hub: make ``datasets`` fail fast instead of waiting on the network.

    ``datasets`` reads ``HF_DATASETS_OFFLINE`` once at import, so the flag is set on its config too.
    """
    import datasets.config

    saved_env = os.environ.get("HF_DATASETS_OFFLINE")
    saved_flags = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved_flags
        if saved_env is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = saved_env


# ---------------------------------------------------------------------------------------------
# Task YAMLs


def lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


@dataclass
class RenderedTasks:
    tasks: list[str]  # lm-eval task names (lm-eval's shipped names, so hub and local runs line up)
    folder: Path  # the run's task YAMLs: TaskManager(include_path=folder, include_defaults=False)
    text: str  # what the config hash covers: our template + the shipped YAMLs it includes
    data_files: dict[str, str] = field(default_factory=dict)  # "task/split" -> absolute path
    fields: list[str] = field(default_factory=list)  # what every row of a local data file must hold


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_tasks(
    template: str,
    out_dir: str | os.PathLike,
    tasks: list[str] | None = None,
    data_files: dict[str, dict[str, Path]] | None = None,
    hub: bool = False,
) -> RenderedTasks:
    """Write the run's lm-eval task YAMLs from ``tasks/<template>``.

    A template lists lm-eval's shipped tasks (``task`` + ``include``, the shipped YAML relative to
    ``lm_eval/tasks``) and the keys that switch them to local data (``local``, per task and/or for
    all). Each task becomes ``<out_dir>/lm_eval_tasks/<task>.yaml``: ``include:`` of the shipped
    YAML (absolute path) plus the local-data keys with absolute data paths. ``tasks``: keep only
    these (default: all). ``data_files``: replacements by task and split (otherwise file names are
    looked up in the shipped ``data/`` folder). ``hub``: leave the shipped data source as it is.

    Only these YAMLs are indexed (``include_defaults=False``): indexing all of lm-eval's ~10k
    shipped YAMLs takes about 40 s here.
    """
    template_text = (TASKS_DIR / template).read_text(encoding="utf-8")
    cfg = yaml.safe_load(template_text)
    members = {m["task"]: m for m in cfg["tasks"]}
    if tasks is not None:
        unknown = [t for t in tasks if t not in members]
        if unknown:
            raise ConfigError(f"{template}: no task(s) {unknown} in this benchmark; known: {sorted(members)}")
        members = {t: members[t] for t in tasks}

    shipped_dir = lm_eval_tasks_dir()
    folder = Path(out_dir) / RENDERED_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    hashed = [template_text]
    resolved: dict[str, str] = {}
    for name, member in members.items():
        include = (shipped_dir / member["include"]).resolve()
        if not include.is_file():
            raise ConfigError(f"{template}: lm-eval {lm_eval_version()} has no {member['include']} (task {name})")
        hashed.append(_yaml_with_includes(include))
        task_cfg: dict[str, Any] = {"include": str(include), "task": name}
        if not hub:
            local = _deep_merge(cfg.get("local") or {}, member.get("local") or {})
            given = (data_files or {}).get(name, {})
            files = {
                split: str(
                    given[split] if split in given else resolve_data_file(file_name, f"{template} ({name}/{split})")
                )
                for split, file_name in (local.get("dataset_kwargs", {}).get("data_files") or {}).items()
            }
            files.update({split: str(path) for split, path in given.items()})
            if not files:
                raise ConfigError(f"{template}: no local data for task {name}; give it data_files or use hub: true")
            local.setdefault("dataset_kwargs", {})["data_files"] = files
            resolved.update({f"{name}/{split}": path for split, path in files.items()})
            task_cfg.update(local)
        header = f"# Written by srt from srt_builtin/benchmarks/tasks/{template}.\n"
        text = header + yaml.safe_dump(task_cfg, sort_keys=False, allow_unicode=True)
        (folder / f"{name}.yaml").write_text(text, encoding="utf-8")
    (folder / "README.md").write_text(
        f"lm-eval task YAMLs of this run. Reproduce outside srt:\n\n"
        f"    lm_eval --include_path {folder} --tasks {','.join(members)} --model hf --model_args pretrained=...\n",
        encoding="utf-8",
    )
    return RenderedTasks(list(members), folder, "\n".join(hashed), resolved, list(cfg.get("fields") or []))


def _yaml_with_includes(path: Path) -> str:
    """A shipped YAML's text followed by the texts it includes (they decide the task too)."""
    texts, seen, todo = [], set(), [path]
    while todo:
        current = todo.pop()
        if current in seen or not current.is_file():
            continue
        seen.add(current)
        text = current.read_text(encoding="utf-8")
        texts.append(f"# {current.name}\n{text}")
        for line in text.splitlines():  # `include:` is a path relative to the including YAML
            if line.startswith("include:"):
                todo.append(current.parent / line.split(":", 1)[1].strip().strip("'\""))
    return "\n".join(texts)


# ---------------------------------------------------------------------------------------------
# Models


def build_hflm(model: Any, tokenizer: Any, batch_size: int = 8, **kwargs: Any):
    """lm-eval's ``HFLM`` around an already-loaded model object (no second load from disk)."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)


def _lm_eval_base():
    from lm_eval.api.model import LM

    return LM


class SrtLM(_lm_eval_base()):  # type: ignore[misc]
    """lm-eval model that answers ``generate_until`` with the SRT refinement.

    Each request's context (the few-shot prompt lm-eval built) becomes the user message; the model
    writes response -> ``### Feedback`` -> ``### Improved Response`` -> refinement in one pass
    (``answer``: normally :meth:`srt.eval.model.EvalModel.answers` in ``srt`` mode, i.e.
    :meth:`srt.inference.SelfRefiner.answer`, cached and resumable) and the refinement, cut at
    the task's stop sequences as ``HFLM`` cuts its generations, is what lm-eval scores. An output
    without a refinement falls back to the initial response (counted in ``stats``). The model's
    own sampling settings apply (its ``max_new_tokens`` is the budget for the whole SRT turn).
    Log-likelihood requests go to ``hflm`` unchanged.
    """

    def __init__(self, hflm: Any, answer: Callable[[list[str]], list[dict[str, Any]]], eos: str | None = None):
        super().__init__()
        self.hflm = hflm
        self.answer = answer  # contexts -> [{"answer": str, "trace": SrtAnswer.to_dict(), "cached": bool}]
        self.eos = eos
        self.stats: Counter[str] = Counter()
        self.traces: dict[str, dict[str, Any]] = {}  # context -> SRT trace fields, for per-sample logs

    def loglikelihood(self, requests):
        return self.hflm.loglikelihood(requests)

    def loglikelihood_rolling(self, requests):
        return self.hflm.loglikelihood_rolling(requests)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text

        contexts = [request.args[0] for request in requests]
        unique = list(dict.fromkeys(contexts))
        by_context = dict(zip(unique, self.answer(unique)))
        answers = []
        for request, context in zip(requests, contexts):
            result = by_context[context]
            until = handle_stop_sequences(request.args[1].get("until"), eos=self.eos)
            answers.append(postprocess_generated_text(result["answer"], stop=until, think_end_token=None))
            trace = result.get("trace") or {}
            self.traces[context] = {
                "srt_response": trace.get("response"),
                "srt_feedback": trace.get("feedback"),
                "srt_refinement": trace.get("refinement"),
                "srt_self_score": trace.get("self_score"),
                "srt_parsed": trace.get("parsed"),
                "srt_fallback": trace.get("fallback"),
                "srt_gate": trace.get("gate"),
                "srt_refinement_score": trace.get("refinement_score"),
                "srt_finish_reason": trace.get("finish_reason"),
                "srt_raw": trace.get("raw"),
                "srt_cached": result.get("cached", False),
            }
        for context in unique:
            trace = self.traces[context]
            self.stats["answered"] += 1
            self.stats["fallback_unparseable"] += bool(trace["srt_fallback"])
            self.stats["truncated"] += trace["srt_finish_reason"] == "length"
            self.stats["cached"] += bool(trace["srt_cached"])
            if trace["srt_gate"] is not None:
                self.stats[f"gate_kept_{trace['srt_gate']}"] += 1
        return answers


def make_lm(
    model: Any,
    answer_mode: str,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str = "lm_eval",
):
    """The lm-eval model for an :class:`srt.eval.model.EvalModel` in the given answer mode.

    ``plain``: lm-eval's ``HFLM`` on the loaded model. ``srt`` / ``gated``: :class:`SrtLM`, answering
    through ``model.answers(..., mode=answer_mode)`` (cached under ``cache_dir``/``cache_key``).
    """
    if answer_mode not in ANSWER_MODES:
        raise ConfigError(f"answer_mode must be one of {ANSWER_MODES}, got {answer_mode!r}")
    batch_size = batch_size or getattr(model, "batch_size", 8)
    if hasattr(model, "hf_lm"):
        hflm = model.hf_lm(batch_size=batch_size)
    else:  # a bare object with .model and .tokenizer
        hflm = build_hflm(model.model, model.tokenizer, batch_size=batch_size)
    if answer_mode == "plain":
        return hflm

    def answer(contexts: list[str]) -> list[dict[str, Any]]:
        items = [{"id": sha256_bytes(c.encode("utf-8"))[:16], "instruction": c} for c in contexts]
        return model.answers(items, cache_key, mode=answer_mode, cache_dir=cache_dir)

    return SrtLM(hflm, answer, eos=model.tokenizer.eos_token)


def lm_eval_cache_path(model: Any, cache_dir: str | os.PathLike | None, settings: dict[str, Any]) -> str | None:
    """Where lm-eval caches plain generations for this model (its sqlite cache keys only on the request)."""
    if cache_dir is None or not hasattr(model, "identity"):
        return None
    identity = {
        **model.identity(),
        "chat_template_hash": model.chat_template_hash,
        "dtype": getattr(model, "dtype", None),
        **settings,
    }
    key = sha256_bytes(json.dumps(identity, sort_keys=True, default=str).encode("utf-8"))[:16]
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(model.name))
    folder = Path(cache_dir) / "lm_eval"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{safe}-{key}")


# ---------------------------------------------------------------------------------------------
# Running and reading results


def evaluate(
    lm: Any,
    rendered: RenderedTasks,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    max_gen_toks: int | None = None,
    apply_chat_template: bool = False,
    seed: int = 0,
    offline: bool = True,
    use_cache: str | None = None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on the rendered group (or the hub tasks), with per-sample logs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(rendered.folder), include_defaults=False)
    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    with datasets_offline() if offline else contextlib.nullcontext():
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=rendered.tasks,
            task_manager=task_manager,
            num_fewshot=num_fewshot,
            limit=limit,
            gen_kwargs=gen_kwargs,
            apply_chat_template=apply_chat_template,
            log_samples=True,
            use_cache=use_cache,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if results is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm_eval.simple_evaluate returned no results on this process")
    return results


def metric_name(metric: str, filter_name: str) -> str:
    """lm-eval's ``metric,filter`` key in a readable form: ``exact_match,strict-match`` -> ``strict_match``."""
    if filter_name == "none":
        return metric
    readable = filter_name.replace("-", "_")
    return readable if metric == "exact_match" else f"{metric}_{readable}"


def task_metrics(results: dict[str, Any], task: str) -> dict[str, float]:
    """The metrics lm-eval reports for one task, renamed (stderr as ``<name>_stderr``); non-numbers dropped."""
    metrics: dict[str, float] = {}
    for key, value in results["results"][task].items():
        if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        metric, filter_name = key.split(",", 1)
        if metric.endswith("_stderr"):
            metrics[metric_name(metric[: -len("_stderr")], filter_name) + "_stderr"] = float(value)
        else:
            metrics[metric_name(metric, filter_name)] = float(value)
    return metrics


def task_samples(
    results: dict[str, Any], task: str, traces: dict[str, dict[str, Any]] | None = None, **extra: Any
) -> list[dict[str, Any]]:
    """One row per document: prompt, raw response, target, and per filter the extracted answer and score."""
    rows: dict[Any, dict[str, Any]] = {}
    for sample in results["samples"][task]:
        doc_id = sample["doc_id"]
        context = sample["arguments"][0][0]
        row = rows.get(doc_id)
        if row is None:
            row = rows[doc_id] = {
                "id": f"{task}/{doc_id}",
                "task": task,
                **extra,
                "doc_id": doc_id,
                "prompt": context,
                "response": sample["resps"][0][0],
                "target": sample["target"],
                **((traces or {}).get(context, {})),
            }
        filter_name = sample.get("filter", "none")
        if filter_name != "none":
            row[f"{metric_name('extracted', filter_name)}"] = sample["filtered_resps"][0]
        for metric in sample["metrics"]:
            row[metric_name(metric, filter_name)] = sample[metric]
    return list(rows.values())


def config_hash(rendered: RenderedTasks, settings: dict[str, Any], data_hashes: dict[str, str]) -> str:
    """sha256 over the task YAMLs (ours and lm-eval's), the run settings and the data file contents."""
    payload = json.dumps({"settings": settings, "data": data_hashes}, sort_keys=True, default=str)
    return sha256_bytes((rendered.text + "\n" + payload).encode("utf-8"))


def run_meta(rendered: RenderedTasks, settings: dict[str, Any], results: dict[str, Any], lm: Any) -> dict[str, Any]:
    """Provenance for the run record: hashes, versions, the exact task configs lm-eval used."""
    data_hashes = {key: sha256_file(path) for key, path in rendered.data_files.items()}
    meta: dict[str, Any] = {
        "task_config_hash": config_hash(rendered, settings, data_hashes),
        "lm_eval_version": lm_eval_version(),
        "lm_eval_tasks": rendered.tasks,
        "task_yaml_dir": str(rendered.folder),
        "data_files": rendered.data_files,
        "data_file_sha256": data_hashes,
        "n_shot": results.get("n-shot", {}),
        "n_samples": results.get("n-samples", {}),
        "lm_eval_configs": json.loads(json.dumps(results.get("configs", {}), default=str)),
    }
    if isinstance(lm, SrtLM):
        meta["srt_stats"] = dict(lm.stats)
    return meta


# ---------------------------------------------------------------------------------------------
# Settings shared by the lm-eval benchmarks


class LmEvalSettings(BenchmarkSettings):
    """Settings every lm-eval benchmark takes (each adds ``data_files`` in its own shape)."""

    data_files: Any = Field(None, description="Local data files (shape per benchmark); None: the shipped fixtures")
    hub: bool = Field(False, description="Use lm-eval's shipped hub tasks on the real data (needs the network)")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot exemplars; None: the benchmark's default")
    limit: int | None = Field(None, ge=1, description="Documents per task (None: all)")
    max_gen_toks: int | None = Field(
        None, ge=1, description="Plain mode: new tokens per answer; None: the task's own (lm-eval's default 256)"
    )
    answer_mode: Literal["plain", "srt", "gated"] | None = Field(None, description="None: the model's answer_mode")
    batch_size: int | None = Field(None, ge=1, description="None: the model's batch size")
    apply_chat_template: bool = Field(
        False, description="Plain mode: render lm-eval's prompt with the model's chat template (srt mode always does)"
    )
    cache: bool = Field(True, description="Reuse generations from earlier runs (under the run's cache_dir)")

    @model_validator(mode="after")
    def _hub_or_files(self) -> LmEvalSettings:
        if self.hub and self.data_files is not None:
            raise ValueError("data_files and hub: true exclude each other (hub data comes from lm-eval's task)")
        return self


class LmEvalBenchmark:
    """Base of the lm-eval benchmarks: settings, the lm-eval run, and the result record.

    A subclass names its YAML template, picks the tasks and data files, and turns lm-eval's
    per-task metrics into its own (``summarize``).
    """

    name: str = ""
    template: str = ""
    settings_model: type[LmEvalSettings] = LmEvalSettings

    def __init__(self, **settings: Any):
        self.settings = parse_settings(self.name, self.settings_model, settings)

    @classmethod
    def from_config(cls, settings: dict[str, Any]):
        return cls(**(settings or {}))

    @classmethod
    def check_settings(cls, settings: LmEvalSettings) -> None:
        """Plan check, no model and no lm-eval run: the tasks exist in this lm-eval, and every local data
        file exists and is readable JSONL/JSON whose rows have the fields the tasks read (``file:line``)."""
        cls.from_config(settings.model_dump()).check_data()

    def check_data(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            rendered = self.tasks(Path(tmp))
        for path in sorted(set(rendered.data_files.values())):
            check_fields(path, rendered.fields, f"benchmark {self.name!r} data file")

    def describe(self) -> dict[str, Any]:
        """Settings plus a hash of what else decides the task: the YAMLs (ours and lm-eval's) and data contents."""
        described = {"benchmark": self.name, "template": self.template, **self.settings}
        if hasattr(self, "languages"):
            described["languages"] = self.languages
        with tempfile.TemporaryDirectory() as tmp:
            rendered = self.tasks(Path(tmp))
        data_hashes = {key: sha256_file(path) for key, path in rendered.data_files.items()}
        described["tasks_and_data_sha256"] = config_hash(rendered, {}, data_hashes)
        described["lm_eval_version"] = lm_eval_version()
        return described

    def render_per_part(
        self, out_dir: Path, parts: Sequence[str], files: Mapping[str, Any], what: str
    ) -> RenderedTasks:
        """One task per part (an MGSM language, a BBH subtask: ``self.task_name(part)``), each with its local
        ``test`` file from ``files`` (keyed by part) where one is given; a file for a part not in ``parts`` is
        a ConfigError unless the data come from the hub."""
        unknown = sorted(set(files) - set(parts))
        if unknown and not self.settings["hub"]:
            raise ConfigError(
                f"benchmark {self.name!r}: data_files for {what}(s) {unknown} not in {what}s {list(parts)}"
            )
        given = {
            self.task_name(part): {"test": resolve_data_file(path, f"benchmark {self.name!r} data_files.{part}")}
            for part, path in files.items()
        }
        names = [self.task_name(part) for part in parts]
        return render_tasks(self.template, out_dir, tasks=names, data_files=given, hub=self.settings["hub"])

    # -- to override -------------------------------------------------------------------------

    def tasks(self, out_dir: Path) -> RenderedTasks:
        raise NotImplementedError

    def summarize(self, per_task: dict[str, dict[str, float]]) -> dict[str, float]:
        raise NotImplementedError

    def task_extra(self, task: str) -> dict[str, Any]:
        return {}

    # -- the run -----------------------------------------------------------------------------

    def answer_mode(self, model: Any) -> str:
        return self.settings["answer_mode"] or getattr(model, "answer_mode", "plain")

    def run(self, model: Any, ctx: Any):
        from srt.eval.benchmark import BenchmarkResult

        s = self.settings
        mode = self.answer_mode(model)
        rendered = self.tasks(Path(ctx.output_dir))
        cache_dir = getattr(ctx, "cache_dir", None) if s["cache"] else None
        lm = make_lm(model, mode, batch_size=s["batch_size"], cache_dir=cache_dir, cache_key=f"lm_eval_{self.name}")
        # In srt mode the SRT turn is an assistant turn: the model's chat template is always applied.
        chat = s["apply_chat_template"] and mode == "plain"
        use_cache = lm_eval_cache_path(model, cache_dir, {"answer_mode": mode}) if mode == "plain" else None
        results = evaluate(
            lm,
            rendered,
            num_fewshot=s["num_fewshot"],
            limit=s["limit"],
            max_gen_toks=s["max_gen_toks"],
            apply_chat_template=chat,
            seed=getattr(ctx, "seed", 0),
            offline=not s["hub"],
            use_cache=use_cache,
        )
        traces = lm.traces if isinstance(lm, SrtLM) else None
        per_task = {task: task_metrics(results, task) for task in rendered.tasks}
        samples = [
            row for task in rendered.tasks for row in task_samples(results, task, traces, **self.task_extra(task))
        ]
        meta = run_meta(rendered, {**self.describe(), "answer_mode": mode, "chat_template": chat}, results, lm)
        meta["per_task"] = per_task
        metrics = self.summarize(per_task)
        # lm-eval's exact match and F1 are fractions (0..1); the report shows them in percent.
        units = {name: "fraction" for name in metrics}
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, units=units)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
