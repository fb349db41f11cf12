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
from srt.demo import word_problems as wp
from srt.demo.run_demo import check_eval, cli, eval_config
from srt.errors import ConfigError, SrtError, TemplateError
from srt_builtin.answers import gold_answer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data"
DEMO_EVAL = REPO / "configs" / "demo_eval.yaml"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"word_problems_{split}.jsonl").read_text().splitlines()]


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
    }
    assert ecfg.output_dir == f"{cfg.output_dir}/eval" and ecfg.seed == cfg.seed
    assert [m.answer_mode for m in ecfg.models] == ["plain", "srt", "srt"]
    assert ecfg.compare == [("stage1", "base"), ("stage2", "stage1")]
    bench = ecfg.benchmarks["word_problems"]
    assert Path(bench["data"]).name == "word_problems_heldout.jsonl" and bench["limit"] <= len(rows("heldout"))


def test_the_script_fills_in_the_run_and_checks_the_eval_before_training(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    cfg = load_config(
        REPO / "configs" / "demo.yaml",
        [f"output_dir={tmp_path}/run", "model.path=tiny", "model.system_prompt=Be brief."],
    )
    checkpoints = {"base": "tiny", "stage1": "/x/stage1/model", "stage2": "/x/stage2/round1/model"}
    ecfg = eval_config(str(DEMO_EVAL), cfg, checkpoints, ["benchmarks.word_problems.limit=5"])
    assert [(m.name, m.path, m.dtype, m.system_prompt) for m in ecfg.models] == [
        ("base", "tiny", "float32", "Be brief."),
        ("stage1", "/x/stage1/model", "float32", "Be brief."),
        ("stage2", "/x/stage2/round1/model", "float32", "Be brief."),
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
    assert hidden.score == shown.score == 4 and hidden.improved_response == shown.improved_response


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
    path = tmp_path / "demo_eval_tiny.yaml"
    path.write_text(yaml.safe_dump(data))
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

    first = _demo([*args, "--skip-stage2"])
    assert "== srt-train stage1" in first and not (out / "stage2").exists()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert list(summary["results"]) == ["base", "stage1"]
    assert [(c["model"], c["baseline"]) for c in summary["comparisons"]] == [("stage1", "base")] * 2

    second = _demo(args)  # stage 1 is reused, stage 2 runs, stage 2 is evaluated and compared
    assert "srt-train run" in second and (out / "stage2" / "round1" / "model" / "srt_done.json").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    results = {m: per["word_problems"] for m, per in summary["results"].items()}
    assert list(results) == ["base", "stage1", "stage2"]
    assert [r["resumed"] for r in results.values()] == [True, True, False]
    assert summary["models"]["stage2"]["path"] == str(out / "stage2" / "round1" / "model")
    pairs = [(c["model"], c["answer"], c["baseline"], c["baseline_answer"]) for c in summary["comparisons"]]
    assert pairs == [
        ("stage1", "answer", "base", "answer"),
        ("stage1", "response", "base", "answer"),
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
    ]:
        m = results[model]["metrics"]
        row = f"| {model} | {label} | {m[metric]:.1f}% ({m[count]}/3) | {m[metric + '_stderr']:.2f} |"
        assert row in text, row
    c = summary["comparisons"][3]
    assert f"vs stage1 (response): {c['gained']} / {c['lost']}, p = {c['sign_test_p']:.2g} |" in text
    for m in ("stage1", "stage2"):
        met = results[m]["metrics"]
        assert f"| {met['fixed_by_refinement']} / {met['broken_by_refinement']} |" in text
        assert f"| {m} | {met['srt_parse_rate']:.1f}% | {met['srt_fallbacks']} |" in text
    for step in (
        "prepare model",
        "srt-train stage1",
        "srt-train run",
        "stage1.sft",
        "stage2.round1.dpo",
        "srt-eval run",
    ):
        assert step in text, step
    assert "| stage2 round 1 | 4 |" in text  # the training data table, from the stage reports
    data = json.loads((out / "demo_results.json").read_text())
    assert data["results"] == {m: {"word_problems": r["metrics"]} for m, r in results.items()}
    assert data["comparisons"] == summary["comparisons"] and set(data["timings"]) >= {"prepare model", "srt-eval run"}
    assert (out / "eval" / "plots" / "word_problems__accuracy.png").stat().st_size > 0
    assert "## Paired comparisons" in (out / "eval" / "report.md").read_text()

    third = _demo(args)  # everything re-read: no step does work, the same results
    assert third.count("(already done, resumed)") == 3
    assert (out / "demo_results.md").read_text() == text


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
