"""bbh benchmark: lm-eval's own 3-shot CoT BBH tasks on the tiny model, offline, over local rows.

The model run uses 2 subtasks x 2 documents and 8 new tokens (the tiny model writes no
"the answer is ..."); the scoring test feeds hand-written responses through lm-eval's own filter
and metric for the same tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from srt.errors import ConfigError
from srt.eval.model import EvalModel
from srt.eval.runner import run_eval
from srt_builtin.benchmarks import lm_eval_bridge as bridge
from srt_builtin.benchmarks.bbh import SUBTASKS, BBHBenchmark

NAVIGATE = [
    {"input": "If you follow these instructions, do you return to the starting point? Take 2 steps. Turn around. "
     "Take 2 steps.\nOptions:\n- Yes\n- No", "target": "Yes"},
    {"input": "If you follow these instructions, do you return to the starting point? Take 3 steps. Take 1 step."
     "\nOptions:\n- Yes\n- No", "target": "No"},
    {"input": "If you follow these instructions, do you return to the starting point? Always face forward. Take 1 "
     "step forward. Take 1 step backward.\nOptions:\n- Yes\n- No", "target": "Yes"},
]  # fmt: skip


def _exemplars(subtask: str) -> list[dict]:
    """The 3-shot CoT exemplars as lm-eval ships them in its task YAML."""
    path = bridge.lm_eval_tasks_dir() / "bbh" / "cot_fewshot" / f"{subtask}.yaml"
    samples = yaml.safe_load(path.read_text(encoding="utf-8"))["fewshot_config"]["samples"]
    assert len(samples) == 3
    return samples


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_bbh_runs_lm_evals_3_shot_cot_tasks_per_subtask(tiny_model_dir, tmp_path):
    navigate = tmp_path / "navigate.jsonl"
    navigate.write_text("".join(json.dumps(r) + "\n" for r in NAVIGATE))
    model = EvalModel("tiny", str(tiny_model_dir), answer_mode="plain", dtype="float32", batch_size=4)
    settings = {
        "bbh": {
            "subtasks": ["boolean_expressions", "navigate"],
            "data_files": {"navigate": str(navigate)},
            "limit": 2,
            "max_gen_toks": 8,
        }
    }
    summary = run_eval([model], settings, tmp_path / "out")
    entry = summary["results"]["tiny"]["bbh"]
    metrics = entry["metrics"]
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())["results"]["tiny"]["bbh"]["metrics"]
    assert saved == metrics
    for sub in ("boolean_expressions", "navigate"):
        assert 0.0 <= metrics[f"{sub}/exact_match"] <= 1.0 and f"{sub}/exact_match_stderr" in metrics
    assert metrics["exact_match"] == pytest.approx(
        (metrics["boolean_expressions/exact_match"] + metrics["navigate/exact_match"]) / 2
    )
    assert entry["meta"]["n_shot"] == {"bbh_cot_fewshot_boolean_expressions": 3, "bbh_cot_fewshot_navigate": 3}
    assert entry["meta"]["data_files"]["bbh_cot_fewshot_navigate/test"] == str(navigate.resolve())

    samples = [
        json.loads(line) for line in (tmp_path / "out" / "tiny" / "bbh" / "samples.jsonl").read_text().splitlines()
    ]
    assert sorted((s["subtask"], s["doc_id"]) for s in samples) == [
        ("boolean_expressions", 0),
        ("boolean_expressions", 1),
        ("navigate", 0),
        ("navigate", 1),
    ]
    docs = {"boolean_expressions": _rows(bridge.DATA_DIR / "bbh_boolean_expressions.jsonl"), "navigate": NAVIGATE}
    for s in samples:
        doc = docs[s["subtask"]][s["doc_id"]]
        assert s["target"] == doc["target"]
        # The prompt lm-eval built: the task description, its 3 CoT exemplars in order, then the question.
        prompt = s["prompt"]
        at = 0
        for ex in _exemplars(s["subtask"]):
            shot = f"Q: {ex['input']}\nA: Let's think step by step.\n{ex['target']}"
            at = prompt.index(shot, at) + len(shot)
        assert prompt.endswith(f"Q: {doc['input']}\nA: Let's think step by step.\n")
        assert prompt.count("Q: ") == 4
        # Scored by lm-eval's get-answer filter: no "the answer is" in the tiny model's text -> invalid, 0.
        assert s["extracted_get_answer"] == "[invalid]" and s["get_answer"] == 0.0
        assert "the answer is" not in s["response"]


def _score(task, responses: list[str]) -> list[float]:
    """lm-eval's own filter pipeline and exact match on hand-written responses (one per document)."""
    task.build_all_requests(rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda inst: inst.doc_id)
    assert len(instances) == len(responses)
    for inst, response in zip(instances, responses):
        inst.resps = [response]
    task.apply_filters()
    return [task.process_results(inst.doc, [inst.filtered_resps["get-answer"]])["exact_match"] for inst in instances]


def test_bbh_answers_are_scored_by_lm_evals_filter(tmp_path):
    from lm_eval.tasks import TaskManager

    bench = BBHBenchmark.from_config({})
    assert bench.subtasks == ["boolean_expressions", "sports_understanding"]  # the shipped fixtures
    rendered = bench.tasks(tmp_path)
    with bridge.datasets_offline():
        tasks = TaskManager(include_path=str(rendered.folder), include_defaults=False).load(rendered.tasks)["tasks"]
    booleans = _rows(bridge.DATA_DIR / "bbh_boolean_expressions.jsonl")
    # The fixture's targets are what Python says the expressions are.
    assert [r["target"] for r in booleans] == [str(eval(r["input"].removesuffix(" is"))) for r in booleans]
    right = [f"Let's evaluate. So the answer is {r['target']}." for r in booleans]
    assert _score(tasks["bbh_cot_fewshot_boolean_expressions"], right) == [1.0] * 5
    sports = _rows(bridge.DATA_DIR / "bbh_sports_understanding.jsonl")
    flipped = {"yes": "no", "no": "yes"}
    responses = [
        f"He plays that sport. So the answer is {sports[0]['target']}.",
        f"So the answer is {flipped[sports[1]['target']]}.",  # wrong
        f"The answer: {sports[2]['target']}",  # no "the answer is": the filter finds nothing
        f"So the answer is {sports[3]['target'].upper()}.",  # exact match is case-sensitive
        f"So the answer is {sports[4]['target']}.\nMore text",  # the filter keeps the first line's match
    ]
    assert _score(tasks["bbh_cot_fewshot_sports_understanding"], responses) == [1.0, 0.0, 0.0, 0.0, 1.0]


def test_bbh_settings(tmp_path):
    hub = BBHBenchmark.from_config({"hub": True})
    assert hub.subtasks == SUBTASKS and len(SUBTASKS) == 27
    rendered = hub.tasks(tmp_path / "hub")
    assert rendered.tasks == [f"bbh_cot_fewshot_{s}" for s in SUBTASKS]
    text = (rendered.folder / "bbh_cot_fewshot_navigate.yaml").read_text()
    assert "dataset_path" not in text and "bbh/cot_fewshot/navigate.yaml" in text  # lm-eval's hub task, unchanged
    # Every shipped subtask of lm-eval's group is ours, and only those.
    group = yaml.safe_load((bridge.lm_eval_tasks_dir() / "bbh" / "cot_fewshot" / "_bbh_cot_fewshot.yaml").read_text())
    assert rendered.tasks == group["task"]
    assert BBHBenchmark.from_config({"subtasks": "bbh_cot_fewshot_navigate", "hub": True}).subtasks == ["navigate"]
    with pytest.raises(ConfigError, match="unknown subtask"):
        BBHBenchmark.from_config({"subtasks": ["navigation"]})
    with pytest.raises(ConfigError, match="no local data for task bbh_cot_fewshot_navigate"):
        BBHBenchmark.from_config({"subtasks": ["navigate"]}).tasks(tmp_path / "a")
    with pytest.raises(ConfigError, match="not in subtasks"):
        BBHBenchmark.from_config({"subtasks": ["navigate"], "data_files": {"snarks": "x.jsonl"}}).tasks(tmp_path)
    with pytest.raises(ConfigError, match="hub: true exclude each other"):
        BBHBenchmark.from_config({"hub": True, "data_files": {"navigate": "x.jsonl"}})
    # The plan reads local rows before any model loads (file:line errors).
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2"):
        run_eval([EvalModel("m", "tiny")], {"bbh": {"data_files": {"navigate": str(bad)}}}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bbh_srt_mode_scores_the_refinement(tiny_model_dir, tmp_path):
    """In srt mode the prompt lm-eval built is the user message and the refinement, cut at the task's stop
    sequences, is what lm-eval's filter reads (as for gsm8k)."""
    from srt.eval.benchmark import EvalContext
    from srt.inference import SelfRefiner

    model = EvalModel(
        "tiny-srt", str(tiny_model_dir), answer_mode="srt", dtype="float32", sampling={"max_new_tokens": 16}
    )
    bench = BBHBenchmark.from_config({"subtasks": ["sports_understanding"], "limit": 2})
    result = bench.run(model, EvalContext(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache"))
    assert result.meta["srt_stats"]["answered"] == 2
    direct = SelfRefiner(model.generator, sampling=model.sampling).answer([row["prompt"] for row in result.samples])
    for row, answer in zip(result.samples, direct):
        assert row["srt_raw"] == answer.raw
        expected = answer.answer
        for stop in ("</s>", "Q", "\n\n", "<|im_end|>"):
            expected = expected.split(stop)[0]
        assert row["response"] == expected
        assert row["get_answer"] in (0.0, 1.0)
    assert set(result.metrics) == {
        "sports_understanding/exact_match",
        "sports_understanding/exact_match_stderr",
        "exact_match",
    }
