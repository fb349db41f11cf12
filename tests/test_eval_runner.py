"""The harness: two models side by side, report and plots, resume, the generation cache, generate_file."""

import json
import os

import pytest
from eval_helpers import single_thread

from srt.errors import ConfigError, RecordError
from srt.eval.model import EvalModel
from srt.eval.runner import cli_run, generate_file, run_eval

_threads = pytest.fixture(autouse=True, scope="module")(single_thread)
JUDGE = {"name": "length", "target_words": 4}
SAMPLING = {"temperature": 1.0, "max_new_tokens": 8}
BENCHMARKS = {
    "alpaca_eval": {"limit": 4},
    "judge_agreement": {"limit": 2},
    "refine_vs_rerank": {"limit": 2, "n": 2},
}


@pytest.fixture(scope="module")
def second_model_dir(tmp_path_factory):
    from srt.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-seed1"), seed=1)


def _models(a, b):
    kw = {"sampling": SAMPLING, "score_sampling": {"max_new_tokens": 6}, "candidate_sampling": {"max_new_tokens": 6}}
    return [EvalModel("tiny-a", str(a), **kw), EvalModel("tiny-b", str(b), **kw)]


def test_two_models_side_by_side_report_and_resume(tiny_model_dir, second_model_dir, tmp_path):
    out = tmp_path / "eval"
    summary = run_eval(_models(tiny_model_dir, second_model_dir), BENCHMARKS, out, seed=3, judge=JUDGE)

    for model in ("tiny-a", "tiny-b"):
        for bench in BENCHMARKS:
            entry = summary["results"][model][bench]
            assert entry["resumed"] is False and entry["metrics"]
            assert (out / model / bench / "samples.jsonl").is_file()
            assert json.loads((out / model / bench / "metrics.json").read_text())["config_hash"] == entry["config_hash"]
        assert summary["models"][model]["chat_template_hash"] != "none"
        assert summary["models"][model]["sampling"]["temperature"] == 1.0
    # Different weights -> different answers and a different identity.
    assert summary["models"]["tiny-a"]["weights_fingerprint"] != summary["models"]["tiny-b"]["weights_fingerprint"]
    a = (out / "tiny-a" / "alpaca_eval" / "samples.jsonl").read_text()
    b = (out / "tiny-b" / "alpaca_eval" / "samples.jsonl").read_text()
    assert [json.loads(x)["output_2"] for x in a.splitlines()] != [json.loads(x)["output_2"] for x in b.splitlines()]

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["run"]["seed"] == 3 and on_disk["run"]["package_versions"]["alpaca_eval"]
    assert on_disk["results"]["tiny-a"]["alpaca_eval"]["task_config_hash"]

    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| model | answer mode | win_rate"))
    assert header.startswith("| model | answer mode | win_rate (%) |")
    assert header.endswith("| srt_parse_rate (%) | srt_fallback_rate (%) |")
    win_a = summary["results"]["tiny-a"]["alpaca_eval"]["metrics"]["win_rate"]
    row = next(line for line in report.splitlines() if line.startswith("| tiny-a | plain |"))
    assert f"| {win_a:.1f} ±" in row and row.endswith("| – | – |")  # plain answers: no SRT rates
    assert "## judge_agreement" in report and "| agreement (%) |" in report and "## refine_vs_rerank" in report
    assert summary["results"]["tiny-a"]["alpaca_eval"]["units"]["win_rate"] == "percent"
    # refine_vs_rerank answers in srt mode whatever the model's mode: its rates are shown.
    assert summary["results"]["tiny-a"]["refine_vs_rerank"]["metrics"]["srt_fallback_rate"] == 100
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "win_rates.png" in pngs and "judge_agreement__self_scores_chosen.png" in pngs
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    # Resume: nothing re-runs, results identical, samples untouched.
    mtime = (out / "tiny-a" / "alpaca_eval" / "samples.jsonl").stat().st_mtime_ns
    again = run_eval(_models(tiny_model_dir, second_model_dir), BENCHMARKS, out, seed=3, judge=JUDGE)
    for model in ("tiny-a", "tiny-b"):
        for bench in BENCHMARKS:
            assert again["results"][model][bench]["resumed"] is True
            assert again["results"][model][bench]["metrics"] == summary["results"][model][bench]["metrics"]
    assert (out / "tiny-a" / "alpaca_eval" / "samples.jsonl").stat().st_mtime_ns == mtime

    # A changed setting re-runs only that benchmark; its answers come from the generation cache.
    cache = out / "cache" / "tiny-a" / "answers.jsonl"
    cached_lines = len(cache.read_text().splitlines())
    changed = {**BENCHMARKS, "alpaca_eval": {"limit": 4, "lc_min_items": 3}}
    third = run_eval(_models(tiny_model_dir, second_model_dir), changed, out, seed=3, judge=JUDGE)
    assert third["results"]["tiny-a"]["alpaca_eval"]["resumed"] is False
    assert third["results"]["tiny-a"]["judge_agreement"]["resumed"] is True
    assert len(cache.read_text().splitlines()) == cached_lines


def test_generation_cache_is_keyed_by_decoding_and_resumes(tiny_model_dir, tmp_path):
    items = [{"id": str(i), "instruction": f"Say {w}."} for i, w in enumerate(["hi", "yes", "no"])]
    model = EvalModel("m", str(tiny_model_dir), sampling=SAMPLING, cache_dir=tmp_path)
    first = model.answers(items[:2], "k")
    assert [r["cached"] for r in first] == [False, False]
    both = model.answers(items, "k")  # only the third is generated
    assert [r["cached"] for r in both] == [True, True, False]
    assert [r["answer"] for r in both[:2]] == [r["answer"] for r in first]
    longer = EvalModel("m", str(tiny_model_dir), sampling={**SAMPLING, "max_new_tokens": 9}, cache_dir=tmp_path)
    assert [r["cached"] for r in longer.answers(items, "k")] == [False, False, False]
    assert len((tmp_path / "m" / "k.jsonl").read_text().splitlines()) == 6
    assert model.describe()["revision"] and model.describe()["chat_template_hash"] == model.chat_template_hash


def test_generate_file_is_resumable(tiny_model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "instruction": "Hi"}\n{"instruction": "Name a fruit."}\n')
    dst = tmp_path / "out.jsonl"
    sampling = {"max_new_tokens": 6}
    stats = generate_file(str(tiny_model_dir), src, dst, mode="srt", sampling=sampling)
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "line-2"]
    assert all(r["mode"] == "srt" and r["trace"]["raw"] is not None for r in rows)
    assert stats["generated"] == 2 and stats["fallback_unparseable"] == 2 and stats["parsed"] == 0
    assert json.loads((tmp_path / "out.jsonl.stats.json").read_text())["answered"] == 2

    src.write_text(src.read_text() + '{"id": "c", "instruction": "Count."}\n')
    stats = generate_file(str(tiny_model_dir), src, dst, mode="srt", sampling=sampling)
    assert stats["already_done"] == 2 and stats["generated"] == 1 and stats["answered"] == 3

    plain = generate_file(
        str(tiny_model_dir),
        src,
        tmp_path / "plain.jsonl",
        mode="rerank",
        n=2,
        sampling=sampling,
        score_sampling={"max_new_tokens": 4},
    )
    assert plain["answered"] == 3
    assert all(
        len(json.loads(x)["trace"]["candidates"]) == 2 for x in (tmp_path / "plain.jsonl").read_text().splitlines()
    )

    src.write_text('{"id": "a"}\n')
    with pytest.raises(RecordError, match=r"in.jsonl:1: expected an object with a non-empty string 'instruction'"):
        generate_file(str(tiny_model_dir), src, tmp_path / "x.jsonl")
    with pytest.raises(ConfigError, match="unknown mode"):
        generate_file(str(tiny_model_dir), src, tmp_path / "x.jsonl", mode="best")


def test_cli_run_with_config_and_errors(tiny_model_dir, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "seed: 1\n"
        "judge: {name: length, target_words: 4}\n"
        "models:\n"
        f"  - {{name: base, path: {tiny_model_dir}, sampling: {{max_new_tokens: 4}}}}\n"
        "benchmarks:\n"
        "  alpaca_eval: {limit: 2}\n"
        "  ae_srt: {plugin: alpaca_eval, limit: 2, answer_mode: srt}\n"
    )
    summary = cli_run(config_path=config)
    assert set(summary["results"]["base"]) == {"alpaca_eval", "ae_srt"}
    assert summary["results"]["base"]["ae_srt"]["meta"]["answer_mode"] == "srt"
    assert summary["results"]["base"]["ae_srt"]["metrics"]["srt_fallback_rate"] == 100
    # --benchmarks selects; --model replaces the config's models.
    only = cli_run(
        models=[f"other={tiny_model_dir}"], benchmarks="alpaca_eval", config_path=config, output_dir=tmp_path / "out2"
    )
    assert list(only["results"]) == ["other"] and list(only["results"]["other"]) == ["alpaca_eval"]

    config.write_text("modles: []\n")
    with pytest.raises(ConfigError, match="modles"):
        cli_run(config_path=config)
    with pytest.raises(ConfigError, match="share the name"):
        run_eval([EvalModel("x", "tiny"), EvalModel("x", "tiny")], {"alpaca_eval": {}}, tmp_path)
    with pytest.raises(ConfigError, match="answer_mode"):
        EvalModel("x", "tiny", answer_mode="refine")
    with pytest.raises(ConfigError, match="unknown sampling setting"):
        EvalModel("x", "tiny", sampling={"temp": 1})


def test_hf_lm_wraps_the_loaded_model(tiny_model_dir):
    """lm-eval's HFLM around the already-loaded model scores real log-likelihoods."""
    from lm_eval.api.instance import Instance

    model = EvalModel("m", str(tiny_model_dir), batch_size=2)
    lm = model.hf_lm()
    assert lm.model is model.model
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=("The capital of France is", " Paris."), idx=0),
        Instance(request_type="loglikelihood", doc={}, arguments=("The capital of France is", " 😀 🚀 ✨"), idx=1),
    ]
    results = lm.loglikelihood(requests)
    assert len(results) == 2 and all(ll < 0 for ll, _ in results)
    assert results[0][0] != results[1][0]


def test_generate_file_is_one_run_per_output_file(tiny_model_dir, tmp_path):
    from srt.pipeline.lock import RunLock, RunLockedError

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "instruction": "Hi"}\n')
    dst = tmp_path / "out.jsonl"
    with RunLock.for_file(dst, "srt-eval generate"):  # as a second process would find it
        with pytest.raises(RunLockedError, match=rf"output {dst} is in use by another run \(pid {os.getpid()}") as err:
            generate_file(str(tiny_model_dir), src, dst, sampling={"max_new_tokens": 4})
        assert str(err.value).endswith("or give this run another output"), err.value  # the flag's name
        assert not dst.exists()  # nothing generated or written
        # Another output file in the same folder is another run.
        other = generate_file(str(tiny_model_dir), src, tmp_path / "other.jsonl", sampling={"max_new_tokens": 4})
        assert other["generated"] == 1
    assert generate_file(str(tiny_model_dir), src, dst, sampling={"max_new_tokens": 4})["generated"] == 1
