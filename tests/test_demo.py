"""The offline demo: its configs, its word-problem data (every gold answer recomputed here from the
question text alone), its scorer, and its resumable evaluation on the tiny model (SmolLM2 is too slow
for tests; `make demo` runs it)."""

import copy
import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from srt.config import RunConfig, load_config
from srt.demo import word_problems as wp
from srt.demo.run_demo import (
    DemoEvalConfig,
    DemoModel,
    ModeResult,
    RubricScorer,
    Timings,
    evaluate,
    final_number,
    gold_number,
    load_demo_eval_config,
    paired_changes,
    write_results,
)
from srt.errors import ConfigError, TemplateError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data"


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"word_problems_{split}.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------ configs


def test_demo_configs_validate_and_fit_the_data():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    assert cfg.model.path == "smollm2-135m-instruct" and cfg.critic["name"] == "reference"
    # Each stage exports merged weights, so stage 2 and the evaluation load plain HF folders.
    assert cfg.sft.lora is not None and cfg.sft.merge_lora and cfg.dpo.lora is not None and cfg.dpo.merge_lora
    for src in (cfg.data.stage1, cfg.data.stage2):
        assert src.fields["reference"] == "answer" and src.limit <= len(rows(Path(src.path).stem.split("_")[-1]))
    # The critic settings are the plugin's (unknown keys would be refused when stage 1 starts).
    from srt.registry import create_critic

    create_critic(cfg.critic["name"], {k: v for k, v in cfg.critic.items() if k != "name"})

    ecfg = load_demo_eval_config(REPO / "configs" / "demo_eval.yaml")
    assert [m.checkpoint for m in ecfg.models] == ["base", "stage1", "stage2"]
    assert Path(ecfg.heldout.path).name == "word_problems_heldout.jsonl"


def test_demo_eval_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "eval.yaml"
    bad.write_text("heldout: {path: x.jsonl, fields: {instruction: instruction}}\nmodels: []\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"eval.yaml: invalid config: .*models.*batchsize: unknown key"):
        load_demo_eval_config(bad)
    bad.write_text("heldout: {path: x.jsonl}\nmodels: [{name: b, checkpoint: base, modes: [plain]}]\n")
    with pytest.raises(ConfigError, match="needs a 'reference' column"):
        load_demo_eval_config(bad)


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
        assert gold_number(row["answer"]) == expected, row
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


# ----------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize(
    "text, number",
    [
        ("3 x 10 = 30 pencils.\n#### 3\nThe answer is: 3", 3),  # the answer marker wins over the work
        ("He pays $1,250.50 in total.", Fraction("1250.5")),
        ("So the change is 60 - 54 = 6.", 6),
        ("The answer is -4.", -4),
        ("#### 42", 42),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_gold_number_needs_the_hash_line():
    assert gold_number("4 + 5 = 9.\n#### 9") == 9
    with pytest.raises(Exception, match="no '#### <number>' line"):
        gold_number("The answer is 9.")


def test_rubric_scorer_is_the_reference_critic_and_agrees_with_exact_match():
    gold = "Each box holds 4 pencils, and there are 3 boxes, so Ava has 3 x 4 = 12 pencils.\n#### 12"
    q = "Ava has 3 boxes with 4 pencils in each box. How many pencils does Ava have in total?"
    texts = ["3 x 4 = 12. The answer is 12.", "3 + 4 = 7. The answer is 7.", "12", "no idea"]
    scores = RubricScorer()([(q, t, gold) for t in texts])
    assert scores == [10, 4, 7, 1]
    assert [final_number(t) == gold_number(gold) for t in texts] == [s >= 7 for s in scores]


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


# ------------------------------------------------------------------------------ evaluation (tiny)


def test_evaluation_scores_caches_and_resumes(tiny_model_dir, tmp_path):
    cfg = RunConfig(output_dir=str(tmp_path / "run"), model={"path": "tiny", "dtype": "float32"})
    ecfg = DemoEvalConfig(
        heldout={
            "path": str(DATA / "word_problems_heldout.jsonl"),
            "limit": 3,
            "fields": {"id": "id", "instruction": "instruction", "reference": "answer"},
        },
        batch_size=2,
        plain_max_new_tokens=8,
        srt_max_new_tokens=12,
        models=[
            DemoModel(name="base", checkpoint="base", modes=["plain"]),
            DemoModel(name="stage1", checkpoint="stage1", modes=["srt", "plain"]),
            DemoModel(name="stage2", checkpoint="stage2", modes=["srt"]),
        ],
    )
    checkpoints = {"base": str(tiny_model_dir), "stage1": str(tiny_model_dir)}  # no stage 2: skipped
    Path(cfg.output_dir).mkdir(parents=True)
    timings = Timings(Path(cfg.output_dir) / "timings.json")
    first = evaluate(cfg, ecfg, checkpoints, timings)
    assert [(r.model, r.mode) for r in first] == [
        ("base", "plain"),
        ("stage1", "srt (refinement)"),
        ("stage1", "plain (response)"),
    ]
    assert all(r.n == 3 and len(r.samples) == 3 for r in first)
    # The random tiny model writes no number matching the gold, and never the SRT format.
    srt = first[1].srt
    assert srt["parse_rate"] == 0.0 and srt["fallbacks"] == 3
    assert all(t["did_work"] for t in timings.this_run.values())

    again = Timings(Path(cfg.output_dir) / "timings.json")
    second = evaluate(cfg, ecfg, checkpoints, again)
    assert not any(t["did_work"] for t in again.this_run.values())  # every answer came from the cache
    assert [r.samples for r in second] == [r.samples for r in first]

    path = write_results(second, cfg, ecfg, again)
    text = path.read_text()
    assert "| base | plain |" in text and "| stage1 | srt (refinement) |" in text
    assert "| base plain | stage1 srt (refinement) | 0 | 0 | 1 |" in text  # the tiny model is never right
    data = json.loads((Path(cfg.output_dir) / "demo_results.json").read_text())
    assert [r["correct"] for r in data["results"]] == [r.correct for r in first]
    assert (Path(cfg.output_dir) / "plots" / "accuracy.png").stat().st_size > 0


def _result(model: str, mode: str, correct: list[bool]) -> ModeResult:
    samples = [{"id": f"q{i}", "correct": c} for i, c in enumerate(correct)]
    return ModeResult(
        model, mode, len(correct), sum(correct), None, samples, {"parse_rate": 1.0} if mode.startswith("srt") else None
    )


def test_paired_changes_compare_each_checkpoint_with_the_one_before():
    results = [
        _result("base", "plain", [True, False, False, False, False, False]),
        _result("stage1", "srt (refinement)", [True, True, True, True, True, True]),
        _result("stage1", "plain (response)", [False, True, False, False, False, False]),
        _result("stage2", "srt (refinement)", [True, True, True, True, True, False]),
        _result("stage2", "plain (response)", [True, True, True, False, False, False]),
    ]
    rows = {(r["before"], r["after"]): (r["gained"], r["lost"], r["sign_test_p"]) for r in paired_changes(results)}
    assert rows == {
        ("base plain", "stage1 srt (refinement)"): (5, 0, 0.0625),  # 2 * (1/2)^5
        ("base plain", "stage1 plain (response)"): (1, 1, 1.0),
        ("stage1 srt (refinement)", "stage2 srt (refinement)"): (0, 1, 1.0),
        ("stage1 plain (response)", "stage2 plain (response)"): (2, 0, 0.5),
    }


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
