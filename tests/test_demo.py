"""The offline demo: its configs (an srt-train run config and a plain srt-eval config), its word-problem
data (every gold answer recomputed here from the question text alone), and the whole demo on the tiny
model: stage 1, stage 2, srt-eval, the results table, resuming (SmolLM2 is too slow for tests; `make demo`
runs it)."""

import copy
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from srt.config import load_config
from srt.demo import out_of_template as oot_mod
from srt.demo import word_problems as wp
from srt.demo.run_demo import check_eval, cli, eval_config
from srt.errors import ConfigError, SrtError, TemplateError
from srt_builtin.answers import gold_answer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data"
DEMO_EVAL = REPO / "configs" / "demo_eval.yaml"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"word_problems_{split}.jsonl").read_text().splitlines()]


def oot_rows() -> list[dict]:
    return [json.loads(line) for line in (DATA / oot_mod.FILE).read_text().splitlines()]


# ------------------------------------------------------------------------------------------ configs


def test_demo_configs_validate_and_fit_the_data(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs name their data relative to the repository
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.model.path == "smollm2-135m-instruct" and cfg.critic["name"] == "reference"
    # Each stage exports merged weights, so stage 2 and the evaluation load plain HF folders.
    assert cfg.sft.lora is not None and cfg.sft.merge_lora and cfg.dpo.lora is not None and cfg.dpo.merge_lora
    for src in (cfg.data.stage1, cfg.data.stage2):
        assert src.fields["reference"] == "answer" and src.limit <= len(rows(Path(src.path).stem.split("_")[-1]))
    # The critic settings are the plugin's (unknown keys would be refused when stage 1 starts).
    from srt.registry import create_critic

    create_critic(cfg.critic["name"], {k: v for k, v in cfg.critic.items() if k != "name"})

    # configs/demo_eval.yaml is a plain srt-eval config that, as written, evaluates the default run.
    from srt.eval.runner import load_eval_config

    ecfg = load_eval_config(DEMO_EVAL)
    paths = {m.name: m.path for m in ecfg.models}
    assert paths == {
        "base": cfg.model.path,
        "stage1": f"{cfg.output_dir}/stage1/model",
        "stage2": f"{cfg.output_dir}/stage2/round1/model",
        "refinement_only": f"{cfg.output_dir}/baselines/refinement_only/stage1/model",
        "no_feedback": f"{cfg.output_dir}/baselines/no_feedback/stage1/model",
    }
    assert ecfg.output_dir == f"{cfg.output_dir}/eval" and ecfg.seed == cfg.seed
    modes = {m.name: m.answer_mode for m in ecfg.models}
    assert modes == {
        "base": "plain",
        "stage1": "srt",
        "stage2": "srt",
        "refinement_only": "plain",
        "no_feedback": "srt",
    }
    # Every SRT model is compared with the refinement-only baseline, not only with the base model.
    assert {("stage1", "refinement_only"), ("stage2", "refinement_only"), ("no_feedback", "refinement_only")} <= set(
        ecfg.compare
    )
    assert ("stage1", "base") in ecfg.compare and ("stage2", "stage1") in ecfg.compare
    bench = ecfg.benchmarks["word_problems"]
    assert Path(bench["data"]).name == "word_problems_heldout.jsonl" and bench["limit"] <= len(rows("heldout"))
    oot = ecfg.benchmarks["out_of_template"]
    assert oot["plugin"] == "word_problems" and Path(oot["data"]).name == oot_mod.FILE
    assert oot["limit"] <= len(oot_rows())


def test_the_script_fills_in_the_run_and_checks_the_eval_before_training(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [f"output_dir={tmp_path}/run", "model.path=tiny", "model.system_prompt=Be brief."],
    )
    checkpoints = {"base": "tiny", "stage1": "/x/stage1/model", "stage2": "/x/stage2/round1/model"}
    checkpoints.update(refinement_only="/x/ro/model", no_feedback="/x/nf/model")
    ecfg = eval_config(str(DEMO_EVAL), cfg, checkpoints, ["benchmarks.word_problems.limit=5"])
    assert [(m.name, m.path, m.dtype, m.system_prompt) for m in ecfg.models] == [
        ("base", "tiny", "float32", "Be brief."),
        ("stage1", "/x/stage1/model", "float32", "Be brief."),
        ("stage2", "/x/stage2/round1/model", "float32", "Be brief."),
        ("refinement_only", "/x/ro/model", "float32", "Be brief."),
        ("no_feedback", "/x/nf/model", "float32", "Be brief."),
    ]
    assert ecfg.output_dir == f"{tmp_path}/run/eval" and ecfg.benchmarks["word_problems"]["limit"] == 5

    # Before training only the base model exists: the stage models and their comparisons are left out.
    early = eval_config(str(DEMO_EVAL), cfg, {"base": "tiny"})
    assert [m.name for m in early.models] == ["base"] and early.compare == []
    check_eval(early)  # srt-eval's plan: benchmark settings, data file, model, output folder
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"demo_eval.yaml: invalid config: modls: unknown key"):
        eval_config(str(DEMO_EVAL), cfg, checkpoints, ["modls=[]"])
    with pytest.raises(SrtError, match=r"benchmarks.word_problems: .*limt: unknown key"):
        check_eval(eval_config(str(DEMO_EVAL), cfg, {"base": "tiny"}, ["benchmarks.word_problems.limt=5"]))
    with pytest.raises(
        Exception, match=r"benchmarks.word_problems: .*nowhere.jsonl: word_problems data file not found"
    ):
        check_eval(eval_config(str(DEMO_EVAL), cfg, {"base": "tiny"}, ["benchmarks.word_problems.data=nowhere.jsonl"]))


# -------------------------------------------------------------------------------------------- data

# One pattern per template, written from the question wording; the answer is recomputed from the
# numbers in the question only (not from the generator's code or its solution text).
RECOMPUTE = {
    "add_then_give": (
        r"has (\d+) \w+\. \w+ buys (\d+) more and then gives (\d+) to a friend",
        lambda a, b, c: a + b - c,
    ),
    "groups": (r"has (\d+) boxes with (\d+) \w+ in each box", lambda boxes, per: boxes * per),
    "share": (r"shares (\d+) \w+ equally among (\d+) friends", lambda total, friends: Fraction(total, friends)),
    "money": (r"buys (\d+) notebooks that cost \$(\d+) each and pays with \$(\d+)", lambda q, p, paid: paid - q * p),
    "two_step": (r"has (\d+) \w+\. \w+ has (\d+) times as many", lambda a, k: a + k * a),
}


@pytest.mark.parametrize("split", wp.SPLITS)
def test_every_gold_answer_recomputed_from_the_question(split):
    data = rows(split)
    assert data and len({r["id"] for r in data}) == len(data)
    for row in data:
        pattern, compute = RECOMPUTE[row["template"]]
        m = re.search(pattern, row["instruction"])
        assert m, row
        expected = compute(*map(int, m.groups()))
        # Whole, non-negative answers (no problem asks for a fraction of a cookie or negative change).
        assert expected == int(expected) >= 0, row
        assert row["final"] == expected, row
        assert gold_answer(row["answer"]) == expected, row  # what the critic and the benchmark read
        assert row["answer"].splitlines()[-1] == f"#### {expected}", row
        # Every calculation written in the worked solution is itself correct.
        for a, op, b, c in re.findall(r"\$?(\d+) ([-+x/]) \$?(\d+) = \$?(\d+)", row["answer"]):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": Fraction(a, b)}[op] == c, row


def test_shipped_data_is_the_generator_output_and_splits_are_disjoint():
    generated = wp.generate_splits(n=len(rows("stage1")))
    for split in wp.SPLITS:
        assert generated[split] == rows(split), f"configs/data/word_problems_{split}.jsonl differs from the generator"
    instructions = [set(r["instruction"] for r in rows(s)) for s in wp.SPLITS]
    assert not (instructions[0] & instructions[1]) and not (instructions[2] & (instructions[0] | instructions[1]))
    # Every template is in every split (the held-out set tests the same kinds of problems).
    assert all({r["template"] for r in rows(s)} == set(RECOMPUTE) for s in wp.SPLITS)


# The out-of-template set: one pattern per template, from the question wording; answers from the
# question's numbers only (and, where the question implies it, a week's 7 days or a fraction's word).
FRACTIONS = {"half": 2, "one third": 3, "one quarter": 4, "one fifth": 5}
RECOMPUTE_OOT = {
    "rate_time": (
        r"rate of (\d+) liters per minute\. The tank holds (\d+) liters\. How many minutes",
        lambda rate, total: Fraction(total, rate),
    ),
    "percent_off": (
        r"costs \$(\d+)\. This week it is (\d+)% off\. What is the sale price",
        lambda price, percent: price - Fraction(price * percent, 100),
    ),
    "how_many_more": (
        r"On Monday \w+ collected (\d+) \w+\. On Tuesday \w+ collected (\d+) \w+\. How many more",
        lambda monday, tuesday: tuesday - monday,
    ),
    "three_way_sum": (r"in all, if \w+ sold (\d+), \w+ sold (\d+) and \w+ sold (\d+)\?", lambda a, b, c: a + b + c),
    "reverse": (
        r"After using (\d+) \w+ for a project, \w+ still had (\d+) \w+\. How many .* at first",
        lambda u, k: u + k,
    ),
    "per_week": (
        r"bakes (\d+) loaves of bread every day\. How many loaves does it bake in (\d+) weeks",
        lambda d, w: d * 7 * w,
    ),
    "age": (
        r"is (\d+) years older than \w+\. In (\d+) years, \w+ will be (\d+) years old\. How old is \w+ now",
        lambda gap, later, future: future - later - gap,
    ),
    "fraction_rest": (
        r"There are (\d+) students in a class, and (half|one third|one quarter|one fifth) of them walk",
        None,  # computed below: the fraction is a word
    ),
}


def test_every_out_of_template_answer_recomputed_from_the_question():
    data = oot_rows()
    assert len(data) == 48 and len({r["id"] for r in data}) == len(data)
    assert {r["template"] for r in data} == set(RECOMPUTE_OOT) and len(RECOMPUTE_OOT) == 8
    for row in data:
        pattern, compute = RECOMPUTE_OOT[row["template"]]
        m = re.search(pattern, row["instruction"])
        assert m, row
        if row["template"] == "fraction_rest":
            size, word = int(m.group(1)), m.group(2)
            expected = size - Fraction(size, FRACTIONS[word])
        else:
            expected = compute(*map(int, m.groups()))
        assert expected == int(expected) >= 0, row
        assert row["final"] == expected and gold_answer(row["answer"]) == expected, row
        assert row["answer"].splitlines()[-1] == f"#### {expected}", row
        for a, op, b, c in re.findall(r"\$?(\d+) ([-+x/]) \$?(\d+) = \$?(\d+)", row["answer"]):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": Fraction(a, b)}[op] == c, row


def test_out_of_template_set_is_the_generator_output_and_shares_no_template_with_training():
    assert oot_mod.generate(48, 2024) == oot_rows(), f"configs/data/{oot_mod.FILE} differs from the generator"
    assert not set(RECOMPUTE_OOT) & set(RECOMPUTE)  # distinct template names
    training = [r["instruction"] for s in wp.SPLITS for r in rows(s)]
    for row in oot_rows():
        # No training template's wording matches an out-of-template question, and none the reverse.
        assert not any(re.search(p, row["instruction"]) for p, _ in RECOMPUTE.values()), row
        assert row["instruction"] not in training
        # Names and objects no training template draws.
        words = set(re.findall(r"[A-Za-z]+", row["instruction"]))
        assert not words & set(wp.NAMES) and not words & {w for pair in wp.ITEMS for w in pair}, row
    for question in training:
        assert not any(re.search(p, question) for p, _ in RECOMPUTE_OOT.values()), question


def test_a_no_feedback_srt_turn_answers_with_its_refinement():
    """What a model trained with ``sft.ablation: no_feedback`` writes: response, the improved-response
    header, the refinement; srt mode takes the refinement (not the whole text) and scores the response alone."""
    from srt.critic_template import parse_srt_output, render_srt_turn
    from srt.inference import SelfRefiner

    text = render_srt_turn("3 + 4 = 8. The answer is 8.", None, "3 + 4 = 7.\n#### 7")
    out = parse_srt_output(text)
    assert out.response == "3 + 4 = 8. The answer is 8." and out.refinement == "3 + 4 = 7.\n#### 7"
    assert out.answer == out.refinement and not out.used_fallback and out.failure.reason == "missing_feedback"
    # No header: still the whole text as the response (fallback), as before.
    assert parse_srt_output("The answer is 8.").used_fallback

    class Fake:
        def chat(self, instructions, sampling, system_prompt=None, desc=None):
            from srt.generation import GenerationOutput

            return [
                GenerationOutput(text=text, num_prompt_tokens=5, num_new_tokens=9, finish_reason="eos")
                for _ in instructions
            ]

    answer = SelfRefiner(Fake()).answer(["q"])[0]
    assert answer.answer == "3 + 4 = 7.\n#### 7" and answer.response == "3 + 4 = 8. The answer is 8."
    assert not answer.fallback and not answer.parsed and answer.feedback is None


def test_a_baseline_shares_the_runs_stage1_data_and_starts_again_when_they_change(monkeypatch, tmp_path):
    from srt.demo.run_demo import baseline_config, share_stage1_data
    from srt.pipeline.steps import StepRecord, plan_steps

    monkeypatch.chdir(REPO)
    config, sets = str(REPO / "configs" / "demo.yaml"), [f"output_dir={tmp_path}/run", "model.path=tiny"]
    run = load_config(config, sets)
    baseline = baseline_config(config, sets, run, "refinement_only")
    assert (
        baseline.sft.ablation == "refinement_only"
        and Path(baseline.output_dir) == tmp_path / "run/baselines/refinement_only"
    )
    with pytest.raises(ConfigError, match="not finished"):
        share_stage1_data(run, baseline)
    stage1 = tmp_path / "run" / "stage1"
    stage1.mkdir(parents=True)
    for name in ("responses.jsonl", "critic_calls.jsonl", "records.jsonl", "report.json"):
        (stage1 / name).write_text(name)
    record = StepRecord(run.output_dir)
    for step in plan_steps(run)[:2]:
        record.finished(step)
    share_stage1_data(run, baseline)
    copy = Path(baseline.output_dir) / "stage1"
    assert (copy / "records.jsonl").read_text() == "records.jsonl" and (copy / "report.json").is_file()
    shared = StepRecord(baseline.output_dir).steps
    assert (
        set(shared) == {"stage1.responses", "stage1.critic"}
        and shared["stage1.critic"] == record.steps["stage1.critic"]
    )
    (copy / "model").mkdir()  # as if its SFT had run
    share_stage1_data(run, baseline)  # same records: nothing to do
    assert (copy / "model").is_dir()
    (stage1 / "records.jsonl").write_text("new records")
    share_stage1_data(run, baseline)  # changed: the baseline starts again from the new copy
    assert not (copy / "model").exists() and (copy / "records.jsonl").read_text() == "new records"
    # A baseline whose stage-1 data would differ (other sampling) cannot share them.
    other = load_config(config, [*sets, f"output_dir={tmp_path}/other", "generation.response.temperature=0.3"])
    with pytest.raises(ConfigError, match="stage1.responses would differ"):
        share_stage1_data(run, other)


def test_step_times_count_only_the_work_of_this_run(tmp_path):
    """The per-step times come from steps.json, but only what each step worked in this run: a step
    an interrupted earlier run started counts from this run's start, a step from the end of the one
    before it, and steps done earlier are left out."""
    from srt.demo.run_demo import pipeline_step_times

    since = 1000.0
    steps = {
        "stage1.responses": {"status": "done", "started_ts": 100.0, "finished_ts": 200.0},  # earlier run
        "stage1.critic": {"status": "done", "started_ts": 200.0, "finished_ts": 201.0},  # earlier run
        "stage1.sft": {"status": "done", "started_ts": 300.0, "finished_ts": 1300.0},  # started, interrupted
        "stage2.round1.responses": {"status": "done", "started_ts": 1300.5, "finished_ts": 1350.0},
        "stage2.round1.critic": {"status": "done", "started_ts": 1300.6, "finished_ts": 1400.0},
        "stage2.round1.dpo": {"status": "done", "started_ts": 1400.0, "finished_ts": 1500.0},
        "stage2.round2.responses": {"status": "started", "started_ts": 1500.0},
    }
    (tmp_path / "steps.json").write_text(json.dumps({"version": 1, "steps": steps}))
    ref = tmp_path / "stage2" / "round1" / "reference_logps"
    ref.mkdir(parents=True)
    (ref / "ref-logps-x.pt").write_text("")
    import os

    os.utime(ref / "ref-logps-x.pt", (1420.0, 1420.0))
    assert pipeline_step_times(tmp_path, since) == {
        "stage1.sft": 300.0,
        "stage2.round1.responses": 49.5,
        "stage2.round1.critic": 50.0,  # from the end of the responses, not its recorded start
        "stage2.round1.dpo: reference pass": 20.0,
        "stage2.round1.dpo: training": 80.0,
    }


def test_demo_critic_setting_keeps_the_gold_answer_out_of_the_feedback():
    from srt.critic import CritiqueRequest
    from srt.critic_template import parse_critique
    from srt.registry import create_critic

    request = CritiqueRequest(
        id="a", instruction="q", response="6 x 7 = 41. The answer is 41.", reference="6 x 7 = 42\n#### 42"
    )
    hidden = parse_critique(create_critic("reference", {"reveal_answer": False}).critique([request])[0].text)
    shown = parse_critique(create_critic("reference", {}).critique([request])[0].text)
    assert "42" in shown.weaknesses + shown.suggestions
    assert "42" not in hidden.weaknesses + hidden.suggestions and "41 is wrong" in hidden.weaknesses
    assert hidden.score == shown.score == 5 and hidden.improved_response == shown.improved_response


# ---------------------------------------------------------------------------- the demo (tiny model)

# The shipped configs, shrunk: a few problems, short generations, LoRA on the tiny model's layers, and
# the reference critic in stage 2 too (a random model's self-critiques never parse, so stage 2 would
# find no pairs and DPO would not run).
TINY = [
    "model.path=tiny",
    "data.stage1.limit=4",
    "data.stage2.limit=4",
    "generation.batch_size=4",
    "generation.chunk_size=4",
    "generation.response.max_new_tokens=8",
    "generation.critique.max_new_tokens=16",
    "sft.epochs=1",
    "sft.lora.target_modules=[q_proj,v_proj]",
    "dpo.lora.target_modules=[q_proj,v_proj]",
    "stage2.critic={name: reference}",
]


def _tiny_eval_config(tmp_path) -> Path:
    data = yaml.safe_load(DEMO_EVAL.read_text())
    for model in data["models"]:
        model.update(batch_size=4, sampling={"temperature": 0.0, "max_new_tokens": 16})
    data["benchmarks"]["word_problems"]["limit"] = 3
    data["benchmarks"]["out_of_template"]["limit"] = 2
    path = tmp_path / "demo_eval_tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _demo(args):
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_on_the_tiny_model_skip_stage2_then_both_stages_then_resumed(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    args = ["--eval-config", str(_tiny_eval_config(tmp_path)), "--set", f"output_dir={out}"]
    for item in TINY:
        args += ["--set", item]

    first = _demo([*args, "--skip-stage2", "--baselines", "refinement_only"])
    assert "== srt-train stage1" in first and not (out / "stage2").exists()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert list(summary["results"]) == ["base", "stage1", "refinement_only"]
    assert set(summary["results"]["stage1"]) == {"word_problems", "out_of_template"}
    pairs = {(c["model"], c["baseline"], c["benchmark"]) for c in summary["comparisons"]}
    assert pairs == {
        (m, b, bench)
        for m, b in [("stage1", "base"), ("refinement_only", "base"), ("stage1", "refinement_only")]
        for bench in ("word_problems", "out_of_template")
    }
    # The baseline shares the run's stage-1 data (copied, with their steps.json entries) and ran only
    # its SFT step, with its ablation, for as many optimizer steps as stage 1.
    base_dir, run_dir = out / "baselines" / "refinement_only", out
    for name in ("responses.jsonl", "critic_calls.jsonl", "records.jsonl", "report.json"):
        assert (base_dir / "stage1" / name).read_bytes() == (run_dir / "stage1" / name).read_bytes(), name
    steps = json.loads((base_dir / "steps.json").read_text())["steps"]
    run_steps = json.loads((run_dir / "steps.json").read_text())["steps"]
    assert steps["stage1.responses"] == run_steps["stage1.responses"]
    assert steps["stage1.critic"] == run_steps["stage1.critic"]
    assert steps["stage1.sft"]["settings"]["sft.ablation"] == "refinement_only"
    assert steps["stage1.sft"]["fingerprint"] != run_steps["stage1.sft"]["fingerprint"]
    done = [json.loads((d / "stage1" / "model" / "srt_done.json").read_text()) for d in (base_dir, run_dir)]
    assert done[0]["global_step"] == done[1]["global_step"] > 0
    assert done[0]["data_stats"]["train"]["examples"] == done[1]["data_stats"]["train"]["examples"]

    second = _demo(args)  # stage 1 is reused, stage 2 runs, the no-feedback baseline too
    assert "srt-train run" in second and (out / "stage2" / "round1" / "model" / "srt_done.json").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    results = {m: per["word_problems"] for m, per in summary["results"].items()}
    assert list(results) == ["base", "stage1", "stage2", "refinement_only", "no_feedback"]
    assert [r["resumed"] for r in results.values()] == [True, True, False, True, False]
    assert summary["models"]["stage2"]["path"] == str(out / "stage2" / "round1" / "model")
    assert summary["models"]["no_feedback"]["path"] == str(out / "baselines" / "no_feedback" / "stage1" / "model")
    pairs = [
        (c["model"], c["answer"], c["baseline"], c["baseline_answer"])
        for c in summary["comparisons"]
        if c["benchmark"] == "word_problems"
    ]
    assert pairs == [
        ("stage1", "answer", "base", "answer"),
        ("stage1", "response", "base", "answer"),
        ("refinement_only", "answer", "base", "answer"),
        ("stage1", "answer", "refinement_only", "answer"),
        ("stage1", "response", "refinement_only", "answer"),
        ("stage2", "answer", "refinement_only", "answer"),
        ("stage2", "response", "refinement_only", "answer"),
        ("no_feedback", "answer", "refinement_only", "answer"),
        ("no_feedback", "response", "refinement_only", "answer"),
        ("stage1", "answer", "no_feedback", "answer"),
        ("stage1", "response", "no_feedback", "response"),
        ("stage2", "answer", "stage1", "answer"),
        ("stage2", "response", "stage1", "response"),
    ]

    # demo_results.{md,json} are srt-eval's numbers.
    text = (out / "demo_results.md").read_text()
    for model, label, metric, count in [
        ("base", "plain", "accuracy", "n_correct"),
        ("stage1", "SRT (refinement)", "accuracy", "n_correct"),
        ("stage1", "its first response", "response_accuracy", "n_response_correct"),
        ("stage2", "SRT (refinement)", "accuracy", "n_correct"),
        ("stage2", "its first response", "response_accuracy", "n_response_correct"),
        ("refinement_only", "plain", "accuracy", "n_correct"),
        ("no_feedback", "SRT (refinement)", "accuracy", "n_correct"),
    ]:
        m = results[model]["metrics"]
        row = f"| {model} | {label} | {m[metric]:.1f}% ({m[count]}/3) | {m[metric + '_stderr']:.2f} |"
        assert row in text, row
    # Every paired comparison of like with like is in the tables (answers, or two first responses).
    shown = [c for c in summary["comparisons"] if c["answer"] == c["baseline_answer"]]
    assert len(shown) == 2 * 9  # 7 answer pairs, 2 pairs of first responses (both SRT)
    for c in shown:
        who = c["model"] if c["answer"] == "answer" else f"{c['model']} (response)"
        base = c["baseline"] if c["answer"] == "answer" else f"{c['baseline']} (response)"
        assert f"| {who} | {base} | {c['gained']} / {c['lost']} | {c['sign_test_p']:.2g} |" in text, c
    for m in ("stage1", "stage2", "no_feedback"):
        met = results[m]["metrics"]
        assert f"| {met['fixed_by_refinement']} / {met['broken_by_refinement']} |" in text
        assert f"| {m} | {met['srt_parse_rate']:.1f}% | {met['srt_fallbacks']} |" in text
    assert "## Summary" in text and "| model | answer | word_problems | out_of_template |" in text
    # Time per step: this run's work of every pipeline step, the baselines' SFT alone, each evaluation.
    for step in (
        "| prepare model |",
        "| srt-train stage1 |",
        "| srt-train run |",
        "| - stage2.round1.responses |",
        "| - stage2.round1.critic |",
        "| - stage2.round1.dpo: reference pass |",
        "| - stage2.round1.dpo: training |",
        "| baseline no_feedback: srt-train stage1 |",
        "| - stage1.sft |",
        "| srt-eval run |",
        "| - no_feedback / out_of_template |",
        "Load average (1, 5, 15 min) at the start",
    ):
        assert step in text, step
    timings = json.loads((out / "timings.json").read_text())
    assert "baseline no_feedback: srt-train stage1 / stage1.responses" not in timings  # shared, not re-run
    assert "baseline no_feedback: srt-train stage1 / stage1.sft" in timings
    assert "| stage2 round 1 | 4 |" in text and "| baseline no_feedback | 4 |" in text  # training data table
    data = json.loads((out / "demo_results.json").read_text())
    assert {m: r["word_problems"] for m, r in data["results"].items()} == {m: r["metrics"] for m, r in results.items()}
    assert data["comparisons"] == summary["comparisons"] and set(data["timings"]) >= {"prepare model", "srt-eval run"}
    assert (out / "eval" / "plots" / "word_problems__accuracy.png").stat().st_size > 0
    assert "## Paired comparisons" in (out / "eval" / "report.md").read_text()

    third = _demo(args)  # everything re-read: no step does work, the same results
    assert third.count("(already done, resumed)") == 6  # model, stage 1, 2 baselines, stage 2, srt-eval
    results_part = text.split("## Time per step")[0]
    assert (out / "demo_results.md").read_text().split("## Time per step")[0] == results_part
    assert "| - stage1.sft |" in (out / "demo_results.md").read_text()  # measured earlier, still shown


# ---------------------------------------------------------------- ChatML BOS (the SmolLM2 template)


def test_chatml_template_whose_bos_marks_every_turn(tiny_tokenizer):
    """SmolLM2's tokenizer has bos = <|im_start|>, which its template renders once per turn."""
    from srt.config import SFTConfig
    from srt.data import SFTDataModule
    from srt.records import Feedback, FeedbackRecord

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{{ bos_token + m['role'] + '\n' + m['content'] + eos_token + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}{% endif %}"
    )
    rec = FeedbackRecord(
        id="r0",
        instruction="What is 2 + 2?",
        response="5",
        refinement="2 + 2 = 4. The answer is 4.",
        feedback=Feedback(weaknesses="Wrong.", suggestions="Add.", score=3, raw="raw"),
        stage=1,
    )
    dm = SFTDataModule(tok, SFTConfig(max_length=512), train_records=[rec])
    dm.setup()
    ids = dm.datasets["train"][0]["input_ids"].tolist()
    assert ids.count(tok.bos_token_id) == 2 and ids[0] == tok.bos_token_id  # user turn + assistant turn

    doubled = copy.deepcopy(tok)
    doubled.chat_template = "{{ bos_token }}" + tok.chat_template  # a BOS rendered twice at the start
    with pytest.raises(TemplateError, match="BOS"):
        SFTDataModule(doubled, SFTConfig(max_length=512), train_records=[rec]).setup()


def test_demo_options_commands_and_eval_config_agree():
    """`make demo-options`: every srt-train command of the recipe is a valid run config (its --set
    overrides on configs/demo.yaml), and configs/demo_eval_options.yaml scores exactly the models
    those commands write, next to the demo's own (read from the demo's answer cache)."""
    import re
    import shlex

    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ndemo-options:", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) := (\S+)$", makefile, flags=re.M))
    commands = [line.split("srt-train", 1)[1] for line in recipe.splitlines() if "srt-train" in line]
    assert len(commands) == 4, commands
    written = set()
    for command in commands:
        args = shlex.split(command.replace("$(OPTIONS)", variables["OPTIONS"]))
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        cfg = load_config(REPO / "configs" / "demo.yaml", overrides)  # raises on a typo
        stage2 = args[0] == "run"
        written.add(f"{cfg.output_dir}/{'stage2/round1' if stage2 else 'stage1'}/model")
    demo = load_config(REPO / "configs" / "demo.yaml")
    _assert_scores_exactly(
        "demo_eval_options.yaml",
        written,
        {"stage1": f"{demo.output_dir}/stage1/model", "stage2": f"{demo.output_dir}/stage2/round1/model"},
    )


def _assert_scores_exactly(eval_config: str, written: set[str], demo_models: dict[str, str]) -> None:
    """configs/<eval_config> scores exactly the models a recipe writes plus the demo's ``demo_models`` (name ->
    path), and those keep the demo evaluation's names and settings, so their answers come from the demo's cache."""
    from srt.eval.runner import load_eval_config

    demo_eval = load_eval_config(DEMO_EVAL)
    options = load_eval_config(REPO / "configs" / eval_config)
    paths = {m.name: m.path for m in options.models}
    assert set(paths.values()) - written == set(demo_models.values())
    assert written <= set(paths.values())
    assert options.cache_dir == f"{demo_eval.output_dir}/cache"
    for name, path in demo_models.items():
        mine = next(m for m in options.models if m.name == name)
        assert mine == next(m for m in demo_eval.models if m.name == name) and mine.path == path
    assert {m for pair in options.compare for m in pair} <= set(paths)


def test_demo_balanced8_commands_and_eval_config_agree():
    """`make demo-balanced8`: every srt-train command of the recipe (its make variables expanded) is a valid run
    config, and configs/demo_eval_balanced8.yaml scores exactly the stage models those commands write, next to the
    demo's stage 1 and refinement-only baseline with the demo's own settings (so their answers come from its cache)."""
    import re
    import shlex

    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) := (.+)$", makefile, flags=re.M))

    def expand(text: str) -> str:
        while "$(" in text:
            text = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), text)
            if all(f"$({name})" not in text for name in variables):
                break
        return text

    recipe = makefile.split("\ndemo-balanced8:", 1)[1].split("\n\n", 1)[0]
    commands = [expand(line.split("srt-train", 1)[1]) for line in recipe.splitlines() if "srt-train" in line]
    assert len(commands) == 3, commands
    written = set()
    for command in commands:
        args = shlex.split(command)
        overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
        cfg = load_config(REPO / "configs" / "demo.yaml", overrides)  # raises on a typo; the last --set wins
        written.add(f"{cfg.output_dir}/{'stage2/round1' if args[0] == 'stage2' else 'stage1'}/model")
        if args[0] == "stage2":
            assert cfg.stage2.refinement_vs_response == ">" and cfg.generation.response.num_samples == 3
            assert args[args.index("--model") + 1] == f"{variables['OPTIONS']}/balanced8/stage1/model"
    assert len(written) == 3
    demo = load_config(REPO / "configs" / "demo.yaml")
    _assert_scores_exactly(
        "demo_eval_balanced8.yaml",
        written,
        {
            "stage1": f"{demo.output_dir}/stage1/model",
            "refinement_only": f"{demo.output_dir}/baselines/refinement_only/stage1/model",
        },
    )
