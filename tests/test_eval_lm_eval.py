"""lm-eval benchmarks (gsm8k, tydiqa, mgsm) on the tiny model, offline, against lm-eval's own backend.

Speed: the tiny model's context is 1,024 tokens and the 8-shot GSM8K CoT prompt is about 1,260
of its tokens, so the model runs use 1-shot prompts, 2 documents per task and 16-32 new tokens.
The scoring tests feed hand-written responses through lm-eval's own filters and metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from srt.errors import ConfigError
from srt.eval.benchmark import BenchmarkResult, EvalContext
from srt.eval.model import EvalModel
from srt_builtin.benchmarks import lm_eval_bridge as bridge
from srt_builtin.benchmarks.gsm8k import GSM8KBenchmark

FAST = {"limit": 2, "num_fewshot": 1, "max_gen_toks": 16}


@pytest.fixture(scope="module")
def plain_model(tiny_model_dir):
    return EvalModel("tiny", str(tiny_model_dir), answer_mode="plain", dtype="float32", batch_size=4)


def ctx(tmp_path: Path) -> EvalContext:
    return EvalContext(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache")


def load_tasks(rendered: bridge.RenderedTasks) -> dict:
    """lm-eval Task objects for a rendered folder, documents loaded offline."""
    from lm_eval.tasks import TaskManager

    with bridge.datasets_offline():
        return TaskManager(include_path=str(rendered.folder), include_defaults=False).load(rendered.tasks)["tasks"]


def score_responses(task, responses: list[str], limit: int | None = None) -> list[dict[str, dict]]:
    """Run lm-eval's own filter pipeline and metrics on hand-written responses (one per document)."""
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    instances = sorted(task.instances, key=lambda inst: inst.doc_id)
    assert len(instances) == len(responses)
    for inst, response in zip(instances, responses):
        inst.resps = [response]
    task.apply_filters()
    scored = []
    for inst in instances:
        scored.append({name: task.process_results(inst.doc, [value]) for name, value in inst.filtered_resps.items()})
    return scored


def gsm8k_docs() -> list[dict]:
    path = bridge.DATA_DIR / "gsm8k_test.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------
# GSM8K


def test_gsm8k_matches_lm_eval_hf_backend(plain_model, tiny_model_dir, tmp_path):
    """Our numbers are what `lm_eval` with its own `hf` model reports for the same model, data and settings."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    result = GSM8KBenchmark.from_config(dict(FAST)).run(plain_model, ctx(tmp_path))
    assert isinstance(result, BenchmarkResult)
    assert set(result.metrics) >= {"strict_match", "flexible_extract"}
    assert all(0.0 <= result.metrics[k] <= 1.0 for k in ("strict_match", "flexible_extract"))

    folder = Path(result.meta["task_yaml_dir"])
    with bridge.datasets_offline():
        reference = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={tiny_model_dir},dtype=float32,device=cpu",
            tasks=["gsm8k_cot"],
            task_manager=TaskManager(include_path=str(folder), include_defaults=False),
            batch_size=4,
            limit=FAST["limit"],
            num_fewshot=FAST["num_fewshot"],
            gen_kwargs={"max_gen_toks": FAST["max_gen_toks"]},
            log_samples=True,
        )
    ref = reference["results"]["gsm8k_cot"]
    assert result.metrics["strict_match"] == ref["exact_match,strict-match"]
    assert result.metrics["flexible_extract"] == ref["exact_match,flexible-extract"]
    # Not just equal zeros: the same generations, prompts and targets document by document.
    ref_rows = bridge.task_samples(reference, "gsm8k_cot")
    assert [(r["prompt"], r["response"], r["target"]) for r in result.samples] == [
        (r["prompt"], r["response"], r["target"]) for r in ref_rows
    ]
    # Plain generations are cached by lm-eval under the run's cache_dir, keyed by the model's identity.
    from sqlitedict import SqliteDict

    (db,) = (tmp_path / "cache" / "lm_eval").glob("tiny-*.db")
    with SqliteDict(str(db)) as cached:
        assert sorted(cached.values()) == sorted(r["response"] for r in result.samples)
    docs = gsm8k_docs()
    assert [r["target"] for r in result.samples] == [d["answer"].split("####")[-1].strip() for d in docs[:2]]
    assert result.samples[0]["prompt"].endswith(f"Q: {docs[0]['question']}\nA:")
    assert result.samples[0]["prompt"].count("Q: ") == 2  # 1 exemplar + the question

    meta = result.meta
    assert meta["lm_eval_version"] == lm_eval.__version__
    assert meta["data_file_sha256"]["gsm8k_cot/test"] == bridge.sha256_file(bridge.DATA_DIR / "gsm8k_test.jsonl")
    assert len(meta["task_config_hash"]) == 64
    assert meta["n_shot"]["gsm8k_cot"] == 1


def test_gsm8k_filters_score_known_answers(tmp_path):
    """lm-eval's strict/flexible extraction over our fixture: right answers score 1, wrong ones 0."""
    rendered = GSM8KBenchmark().tasks(tmp_path)
    task = load_tasks(rendered)["gsm8k_cot"]
    docs = gsm8k_docs()
    golds = [d["answer"].split("####")[-1].strip() for d in docs]
    assert all(g.isdigit() for g in golds) and len(docs) == 12

    right = [f"Some steps. The answer is {g}." for g in golds]
    for scores in score_responses(task, right):
        assert scores["strict-match"]["exact_match"] == 1.0
        assert scores["flexible-extract"]["exact_match"] == 1.0

    task = load_tasks(rendered)["gsm8k_cot"]
    # Only the last number counts for flexible-extract; strict needs "The answer is N."
    loose = [f"First 1000 + 1, so it is {g}" for g in golds]
    wrong = [f"The answer is {int(g) + 1}." for g in golds]
    scores = score_responses(task, loose[:6] + wrong[6:])
    assert [s["strict-match"]["exact_match"] for s in scores] == [0.0] * 12
    assert [s["flexible-extract"]["exact_match"] for s in scores] == [1.0] * 6 + [0.0] * 6


def test_gsm8k_srt_mode_answers_with_the_refinement(tiny_model_dir, tmp_path):
    """In srt mode lm-eval's generations are SelfRefiner.answer's answers, cut at the task's stop strings."""
    from srt.inference import SelfRefiner

    model = EvalModel(
        "tiny-srt", str(tiny_model_dir), answer_mode="srt", dtype="float32", sampling={"max_new_tokens": 24}
    )
    bench = GSM8KBenchmark.from_config(dict(FAST))
    result = bench.run(model, ctx(tmp_path))
    assert result.meta["srt_stats"]["answered"] == 2 and result.meta["srt_stats"]["cached"] == 0
    prompts = [row["prompt"] for row in result.samples]
    direct = SelfRefiner(model.generator, sampling=model.sampling).answer(prompts)
    for row, answer in zip(result.samples, direct):
        assert row["srt_raw"] == answer.raw
        expected = answer.answer
        for stop in ("Q:", "</s>", "<|im_end|>"):
            expected = expected.split(stop)[0]
        assert row["response"] == expected
        assert row["srt_fallback"] == answer.fallback
        assert 0.0 <= row["flexible_extract"] <= 1.0
    # A second run answers from the generation cache, with the same results.
    again = bench.run(model, ctx(tmp_path))
    assert again.meta["srt_stats"]["cached"] == 2
    assert [r["response"] for r in again.samples] == [r["response"] for r in result.samples]


def test_gsm8k_settings_errors(tmp_path):
    with pytest.raises(ConfigError, match="shots: unknown key"):
        GSM8KBenchmark.from_config({"shots": 8})
    with pytest.raises(ConfigError, match="limit"):
        GSM8KBenchmark.from_config({"limit": 0})
    with pytest.raises(ConfigError, match="answer_mode"):
        GSM8KBenchmark.from_config({"answer_mode": "best"})
    with pytest.raises(ConfigError, match="not found"):
        GSM8KBenchmark.from_config({"data_files": "no_such.jsonl"}).tasks(tmp_path)


def test_gsm8k_custom_data_file_changes_documents_and_hash(tmp_path):
    custom = tmp_path / "mine.jsonl"
    custom.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}) + "\n")
    rendered = GSM8KBenchmark.from_config({"data_files": str(custom)}).tasks(tmp_path / "a")
    task = load_tasks(rendered)["gsm8k_cot"]
    docs = list(task.test_docs())
    assert len(docs) == 1 and task.doc_to_target(docs[0]) == "5"
    # The task hash the runner resumes by covers the data contents, not just the path.
    bench = GSM8KBenchmark.from_config({"data_files": str(custom)})
    before = bench.describe()["tasks_and_data_sha256"]
    assert before != GSM8KBenchmark().describe()["tasks_and_data_sha256"]
    custom.write_text(json.dumps({"question": "What is 2 + 4?", "answer": "2 + 4 = 6\n#### 6"}) + "\n")
    assert bench.describe()["tasks_and_data_sha256"] != before
    hub = GSM8KBenchmark.from_config({"hub": True}).tasks(tmp_path / "c")
    text = (hub.folder / "gsm8k_cot.yaml").read_text()
    assert "dataset_path" not in text and "gsm8k-cot.yaml" in text  # the shipped hub task, unchanged


# ---------------------------------------------------------------------------------------------
# TyDi QA GoldP


def test_tydiqa_runs_per_language(plain_model, tmp_path):
    from srt_builtin.benchmarks.multilingual import TyDiQABenchmark

    result = TyDiQABenchmark.from_config({"limit": 1, "max_gen_toks": 8}).run(plain_model, ctx(tmp_path))
    langs = TyDiQABenchmark.LANGUAGES
    for lang in langs:
        for metric in ("f1", "exact_match"):
            assert 0.0 <= result.metrics[f"{lang}/{metric}"] <= 1.0
    assert result.metrics["f1"] == pytest.approx(sum(result.metrics[f"{lang}/f1"] for lang in langs) / len(langs))
    assert sorted(row["language"] for row in result.samples) == sorted(langs)
    # 1-shot (Tulu-2 protocol) with the exemplar from the same language's train split.
    train = [
        json.loads(line) for line in (bridge.DATA_DIR / "tydiqa_train.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    ko = next(row for row in result.samples if row["language"] == "ko")
    ko_exemplar = next(d for d in train if d["id"].startswith("korean-"))
    assert ko["prompt"].startswith(f"맥락: {ko_exemplar['context']}")
    assert f"답변: {ko_exemplar['answers']['text'][0]}\n\n" in ko["prompt"]
    assert result.meta["n_shot"]["tydiqa_goldp_ko"] == 1


def test_tydiqa_f1_and_exact_match_on_known_answers(tmp_path):
    """lm-eval's TyDi QA scoring (SQuAD-style, language-aware) on hand-written answers, per script."""
    from srt_builtin.benchmarks.multilingual import TyDiQABenchmark

    bench = TyDiQABenchmark.from_config({"languages": ["en", "ar", "ru", "ko", "te"]})
    tasks = load_tasks(bench.tasks(tmp_path))

    def scores(lang: str, responses: list[str]) -> list[tuple[float, float]]:
        out = score_responses(tasks[f"tydiqa_goldp_{lang}"], responses)
        return [(float(s["none"]["exact_match"]), s["none"]["f1"]) for s in out]

    # en: gold "Warsaw" / "in Warsaw": a longer sentence gets partial credit against the best gold,
    # "in Warsaw": P = 2/5, R = 1 -> F1 = 4/7; articles and case are ignored.
    en = scores("en", ["She was born in Warsaw", "THE Mediterranean sea"])
    assert en[0][0] == 0.0 and en[0][1] == pytest.approx(4 / 7)
    assert en[1] == (1.0, 1.0)
    # ar: the article "ال" is stripped for Arabic, so "البخارى" matches "بخارى"; a wrong number scores 0.
    assert scores("ar", ["البخارى", "1000 كيلومتر"]) == [(1.0, 1.0), (0.0, 0)]
    # ru: punctuation and case are ignored; "в Сибири" vs "в Восточной Сибири": P = 1, R = 2/3 -> F1 = 0.8.
    ru = scores("ru", ["В 1828 году.", "в Сибири"])
    assert ru[0] == (1.0, 1.0)
    assert ru[1][0] == 0.0 and ru[1][1] == pytest.approx(0.8)
    # ko and te (Hangul, Telugu script): exact spans match; whitespace tokens decide partial credit.
    assert scores("ko", ["1443년", "제주도에 있다"]) == [(1.0, 1.0), (0.0, 0)]
    assert scores("te", ["బంగాళాఖాతంలో"]) == [(1.0, 1.0)]


def test_tydiqa_fixture_answers_are_spans_of_their_passages():
    for name in ("tydiqa_train.jsonl", "tydiqa_dev.jsonl"):
        for line in (bridge.DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            for text, start in zip(doc["answers"]["text"], doc["answers"]["answer_start"]):
                assert doc["context"][start : start + len(text)] == text, doc["id"]


# ---------------------------------------------------------------------------------------------
# MGSM


def test_mgsm_runs_per_language(plain_model, tmp_path):
    from srt_builtin.benchmarks.multilingual import MGSMBenchmark

    result = MGSMBenchmark.from_config({"limit": 1, "max_gen_toks": 16}).run(plain_model, ctx(tmp_path))
    for lang in MGSMBenchmark.FIXTURE_LANGUAGES:
        for metric in ("strict_match", "flexible_extract"):
            assert 0.0 <= result.metrics[f"{lang}/{metric}"] <= 1.0
    assert 0.0 <= result.metrics["flexible_extract"] <= 1.0
    de = next(row for row in result.samples if row["language"] == "de")
    question = "Lena hat 7 Äpfel. Sie kauft noch 5 Äpfel dazu. Wie viele Äpfel hat sie jetzt?"
    assert de["prompt"] == f"Frage: {question}\nSchritt-für-Schritt-Antwort:"
    assert de["target"] == "12"


def test_mgsm_native_answer_phrases_score(tmp_path):
    """lm-eval's per-language strict regexes and flexible extraction on hand-written answers."""
    from srt_builtin.benchmarks.multilingual import MGSMBenchmark

    bench = MGSMBenchmark.from_config({"languages": ["de", "ja", "zh", "sw"]})
    tasks = load_tasks(bench.tasks(tmp_path))
    phrases = {"de": "Die Antwort lautet {}.", "ja": "答えは{}です。", "zh": "答案是 {}。", "sw": "Jibu ni {}."}
    golds = [12, 14, 24]
    for lang, phrase in phrases.items():
        right = score_responses(tasks[f"mgsm_native_cot_{lang}"], [phrase.format(g) for g in golds])
        assert [s["strict-match"]["exact_match"] for s in right] == [1.0, 1.0, 1.0], lang
    # The English phrase is not German: strict fails, the last number still counts for flexible.
    tasks = load_tasks(bench.tasks(tmp_path))
    scored = score_responses(
        tasks["mgsm_native_cot_de"], ["The answer is 12.", "Die Antwort lautet 15.", "7 + 5 = 12 ... 24"]
    )
    assert [s["strict-match"]["exact_match"] for s in scored] == [0.0, 0.0, 0.0]
    assert [s["flexible-extract"]["exact_match"] for s in scored] == [1.0, 0.0, 1.0]


def test_mgsm_settings_errors(tmp_path):
    from srt_builtin.benchmarks.multilingual import MGSMBenchmark, TyDiQABenchmark

    with pytest.raises(ConfigError, match="num_fewshot"):
        MGSMBenchmark.from_config({"num_fewshot": 8})
    with pytest.raises(ConfigError, match="unknown language"):
        MGSMBenchmark.from_config({"languages": ["xx"]})
    with pytest.raises(ConfigError, match="variant"):
        MGSMBenchmark.from_config({"variant": "cot"})
    with pytest.raises(ConfigError, match="no local data for task mgsm_native_cot_th"):
        MGSMBenchmark.from_config({"languages": ["th"]}).tasks(tmp_path)
    with pytest.raises(ConfigError, match="data_files"):
        TyDiQABenchmark.from_config({"data_files": "dev.jsonl"}).tasks(tmp_path)
    # Hub mode needs no local file for any language: the shipped tasks as they are.
    hub = MGSMBenchmark.from_config({"hub": True, "variant": "direct"})
    assert len(hub.languages) == 11
    rendered = hub.tasks(tmp_path / "hub")
    assert "dataset_path" not in (rendered.folder / "mgsm_direct_th.yaml").read_text()
