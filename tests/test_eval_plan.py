"""srt-eval's plan: every mistake is one `Error:` line and exit status 2 before any model loads or any
file is written; one run per output directory; `srt-eval generate` checks its input and output first."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srt.errors import ConfigError, RecordError, SrtError
from srt.eval.runner import generate_file, read_instructions

SRT_EVAL = str(Path(sys.executable).with_name("srt-eval"))
UNSET_KEY = "SRT_TEST_EVAL_KEY_THAT_IS_NOT_SET"


def _write(path, text, mode="w"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _bad_data(tmp_path, case):
    """Data files for the table below; returns the --set value and the message expected."""
    if case == "alpaca_bad_json":
        path = _write(tmp_path / "data" / "ae.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", \n')
        return f"benchmarks.alpaca_eval.data={path}", f"{path}:2: invalid JSON"
    if case == "alpaca_missing_output":
        rows = [{"instruction": "a", "output": "b"}, {"instruction": "c"}]
        path = _write(tmp_path / "data" / "ae.json", json.dumps(rows))
        return f"benchmarks.alpaca_eval.data={path}", f"{path}: row 2: needs a string 'output'"
    if case == "gsm8k_bad_utf8":
        path = _write(tmp_path / "data" / "g.jsonl", b'{"question": "q", "answer": "#### 1"}\n{"question": "\xff"}\n')
        return f"benchmarks.gsm8k.data_files={path}", f"{path}:2: invalid UTF-8 at byte"
    if case == "gsm8k_missing_field":
        path = _write(tmp_path / "data" / "g.jsonl", '{"question": "How many?", "solution": "#### 3"}\n')
        return f"benchmarks.gsm8k.data_files={path}", f"{path}:1: missing field(s) 'answer'"
    if case == "tydiqa_missing_field":
        path = _write(tmp_path / "data" / "dev.jsonl", '{"id": "english-1", "context": "c", "question": "q"}\n')
        return (
            f"benchmarks.tydiqa.data_files={{train: tydiqa_train.jsonl, validation: {path}}}",
            f"{path}:1: missing field(s) 'title', 'answers'",
        )
    if case == "pairs_not_an_object":
        pair = '{"instruction": "q", "chosen": "a", "rejected": "b"}'
        path = _write(tmp_path / "data" / "pairs.jsonl", f"{pair}\n[1, 2]\n")
        return f"benchmarks.judge_agreement.data={path}", f"{path}:2: expected a JSON object, got list"
    raise AssertionError(case)


# (id, benchmarks, extra arguments, expected part of the one Error: line)
MISTAKES = [
    ("unknown_benchmark", "alpaca", [], "unknown srt.benchmarks plugin 'alpaca'; installed: alpaca_eval"),
    (
        "unknown_benchmark_setting",
        "gsm8k",
        ["--set", "benchmarks.gsm8k.shots=8"],
        "benchmarks.gsm8k: srt.benchmarks plugin 'gsm8k': invalid settings: shots: unknown key",
    ),
    (
        "benchmark_setting_of_wrong_type",
        "judge_agreement",
        ["--set", "benchmarks.judge_agreement.limit=two"],
        "benchmarks.judge_agreement: srt.benchmarks plugin 'judge_agreement': invalid settings: limit: Input should be",
    ),
    (
        "benchmark_setting_not_allowed",
        "mgsm",
        ["--set", "benchmarks.mgsm.variant=cot"],
        "invalid settings: variant: Input should be 'native_cot' or 'direct'",
    ),
    (
        "missing_data_file",
        "gsm8k",
        ["--set", "benchmarks.gsm8k.data_files=no_such_gsm8k.jsonl"],
        "benchmarks.gsm8k: benchmark 'gsm8k' data_files: data file 'no_such_gsm8k.jsonl' not found",
    ),
    (
        "missing_alpaca_data_file",
        "alpaca_eval",
        ["--judge", "self", "--set", "benchmarks.alpaca_eval.data=nope.jsonl"],
        "nope.jsonl: alpaca_eval data file not found",
    ),
    ("alpaca_bad_json", "alpaca_eval", ["--judge", "self"], None),
    ("alpaca_missing_output", "alpaca_eval", ["--judge", "self"], None),
    ("gsm8k_bad_utf8", "gsm8k", [], None),
    ("gsm8k_missing_field", "gsm8k", [], None),
    ("tydiqa_missing_field", "tydiqa", [], None),
    ("pairs_not_an_object", "judge_agreement", [], None),
    ("no_judge", "alpaca_eval", [], "benchmarks.alpaca_eval: benchmark 'alpaca_eval' needs a judge critic"),
    ("unknown_judge", "alpaca_eval", ["--judge", "gpt4"], "unknown srt.critics plugin 'gpt4'; installed:"),
    (
        "judge_unknown_setting",
        "alpaca_eval",
        ["--judge", "hf", "--set", "judge.model=tiny", "--set", "judge.temprature=0"],
        "judge: srt.critics plugin 'hf': invalid settings: temprature: unknown key",
    ),
    (
        "judge_model_missing",
        "refine_vs_rerank",
        ["--judge", "hf", "--set", "judge.model=/no/such/judge"],
        "judge: critic 'hf': model: model folder '/no/such/judge' does not exist",
    ),
    (
        "openai_judge_key_unset",
        "alpaca_eval",
        ["--judge", "openai", "--set", "judge.model=gpt-4o", "--set", f"judge.api_key_env={UNSET_KEY}"],
        f"judge: critic 'openai': environment variable {UNSET_KEY} is not set or empty",
    ),
    (
        "openai_judge_needs_a_model",
        "alpaca_eval",
        ["--judge", "openai"],
        "judge: srt.critics plugin 'openai': invalid settings: missing field 'model'",
    ),
    (
        "credential_in_settings",
        "alpaca_eval",
        ["--judge", "openai", "--set", "judge.api_key=sk-live-0123456789abcdef"],
        "judge.api_key looks like a credential",
    ),
    (
        "model_path_missing",
        "judge_agreement",
        ["--model", "gone=/no/such/model/dir"],
        "model 'gone': model folder '/no/such/model/dir' does not exist",
    ),
    ("output_dir_is_a_file", "judge_agreement", ["--output", "{file}"], "output_dir {file} is a file, not a directory"),
]


@pytest.mark.parametrize("case,benchmarks,extra,expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistakes_stop_before_anything_is_loaded_or_written(
    case, benchmarks, extra, expected, cli, tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv(UNSET_KEY, raising=False)
    out = tmp_path / "out"
    a_file = _write(tmp_path / "not-a-dir", "x")
    extra = [a.replace("{file}", str(a_file)) for a in extra]
    if expected is None:
        setting, expected = _bad_data(tmp_path, case)
        extra = [*extra, "--set", setting]
    expected = expected.replace("{file}", str(a_file))
    args = ["run", "--benchmarks", benchmarks, *extra]
    if "--model" not in extra:
        args += ["--model", f"m={tiny_model_dir}"]
    if "--output" not in extra:
        args += ["--output", out]

    code, stdout, stderr = cli(*args)

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert expected in lines[0]
    assert "Traceback" not in stderr and not stdout
    assert not out.exists()  # no cache, no samples, no lock file
    assert a_file.read_text() == "x"
    assert "sk-live-0123456789abcdef" not in stderr


def test_config_mistakes_name_the_model(cli, tiny_model_dir, tmp_path):
    config = tmp_path / "eval.yaml"
    out = tmp_path / "out"
    base = f"output_dir: {out}\nbenchmarks: {{judge_agreement: {{limit: 1}}}}\n"
    tiny = tiny_model_dir
    cases = [
        (
            f"models: [{{name: m, path: {tiny}, sampling: {{temp: 1}}}}]\n",
            "model 'm': unknown sampling setting(s) ['temp']",
        ),
        (
            f"models: [{{name: m, path: {tiny}, answer_mode: refine}}]\n",
            "models.0.answer_mode: Input should be 'plain', 'srt' or 'gated'",
        ),
        (f"models: [{{name: m, path: {tiny}, device: gpu0}}]\n", "model 'm': device 'gpu0' is not a torch device"),
        (f"models: [{{name: m, path: {tiny}}}, {{name: m, path: tiny}}]\n", "two models share the name(s) ['m']"),
        (f"models: [{{name: m, path: {tiny / 'config.json'}}}]\n", "is a file; expected a model folder"),
        (
            "models: [{name: m, path: tiny}]\nbenchmarks: {gsm8k: [8]}\n",
            "benchmarks.gsm8k: Input should be a valid dictionary",
        ),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append(
            (
                f"models: [{{name: m, path: {tiny_model_dir}, device: cuda}}]\n",
                "model 'm': device 'cuda' needs a CUDA GPU, and none is available here",
            )
        )
    for models, expected in cases:
        text = base + models if "benchmarks:" not in models else f"output_dir: {out}\n" + models
        config.write_text(text)
        code, stdout, stderr = cli("run", "--config", config)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), (models, stderr)
        assert expected in lines[0], (expected, lines[0])
        assert not out.exists()


def test_validate_prints_the_plan_and_writes_nothing(cli, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        "validate",
        "--model",
        f"base={tiny_model_dir}",
        "--model",
        f"srt={tiny_model_dir}",
        "--answer-mode",
        "srt",
        "--benchmarks",
        "alpaca_eval,gsm8k,judge_agreement",
        "--judge",
        "hf",
        "--set",
        "judge.model=tiny",
        "--set",
        "benchmarks.gsm8k.limit=2",
        "--output",
        out,
    )
    assert code == 0, stderr
    assert f"plan for srt-eval run: output_dir {out}" in stdout
    assert "model srt" in stdout and "answer_mode srt" in stdout
    assert "benchmark alpaca_eval, judge hf" in stdout and "benchmark gsm8k, limit 2\n" in stdout
    assert stdout.rstrip().endswith("ok: nothing to fix")
    assert not out.exists()


def test_plan_builds_each_benchmark_once_with_the_runs_judge(tiny_model_dir, tmp_path):
    from srt.eval.model import EvalModel
    from srt.eval.plan import plan_eval

    judge = {"name": "hf", "model": "tiny", "max_new_tokens": 4}
    plan = plan_eval(
        [EvalModel("m", str(tiny_model_dir))],
        {
            "alpaca_eval": {"limit": 2},
            "own_judge": {"plugin": "alpaca_eval", "limit": 1, "judge": {"name": "self"}},
            "gsm8k": None,
        },
        tmp_path / "out",
        judge=judge,
    )
    by_name = {b.name: b for b in plan.benchmarks}
    assert by_name["alpaca_eval"].settings["judge"] == judge and by_name["alpaca_eval"].judge == "hf"
    assert by_name["own_judge"].plugin == "alpaca_eval" and by_name["own_judge"].judge == "self"
    assert len(by_name["own_judge"].instance.items) == 1 and by_name["gsm8k"].judge is None
    assert plan.cache_dir == tmp_path / "out" / "cache" and not (tmp_path / "out").exists()


def test_benchmarks_declare_settings_models_with_descriptions():
    from srt.registry import BENCHMARKS, available, load_plugin

    for name in available(BENCHMARKS):
        cls = load_plugin(BENCHMARKS, name)
        model = cls.settings_model
        assert model.model_config.get("extra") == "forbid", name
        undocumented = [f for f, info in model.model_fields.items() if not info.description]
        assert not undocumented, (name, undocumented)
        # The constructor parses the same model: its defaults are the benchmark's settings (a benchmark
        # with a required setting, e.g. word_problems' data file, checks this in its own tests).
        required = [f for f, info in model.model_fields.items() if info.is_required()]
        if not getattr(cls, "uses_judge", False) and not required:
            assert set(cls.from_config({}).settings) == set(model.model_fields), name


def _lock_holder(path):
    try:
        return json.loads(path.read_text()).get("pid")
    except (OSError, ValueError):
        return None


def test_a_second_run_on_a_locked_output_dir_stops_before_generating(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "SRT_CACHE_DIR": str(tmp_path / "srt-cache"), "HOME": str(tmp_path)}
    # Slow on purpose: 16 answers of up to 1024 tokens, each judged by the model itself.
    first = subprocess.Popen(
        [
            SRT_EVAL,
            "run",
            "--model",
            f"first={tiny_model_dir}",
            "--benchmarks",
            "alpaca_eval",
            "--judge",
            "self",
            "--output",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while _lock_holder(out / ".srt.lock") != first.pid:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = subprocess.run(
            [
                SRT_EVAL,
                "run",
                "--model",
                f"second={tiny_model_dir}",
                "--benchmarks",
                "judge_agreement",
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert first.poll() is None, "the first run ended before the second one was checked"
    finally:
        first.terminate()  # SIGTERM: the run stops at the next step boundary
        first.communicate(timeout=120)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2, second.stderr
    assert len(lines) == 1 and lines[0].startswith(f"Error: output_dir {out} is in use by another run (pid {first.pid}")
    assert "Traceback" not in second.stderr
    assert not (out / "second").exists() and not (out / "cache" / "second").exists()  # generated nothing


def test_generate_checks_input_output_and_model_first(tiny_model_dir, tmp_path):
    good = _write(tmp_path / "q.jsonl", '{"id": "a", "instruction": "Hi"}\n')
    out = tmp_path / "answers" / "a.jsonl"
    cases = [
        (
            _write(tmp_path / "u.jsonl", b'{"instruction": "ok"}\n{"instruction": "\xc3"}\n'),
            out,
            str(tiny_model_dir),
            RecordError,
            r"u.jsonl:2: invalid UTF-8 at byte 17",
        ),
        (
            _write(tmp_path / "d.jsonl", '{"id": "a", "instruction": "x"}\n\n{"id": "a", "instruction": "y"}\n'),
            out,
            str(tiny_model_dir),
            RecordError,
            r"d.jsonl:3: duplicate id 'a' \(first at line 1\)",
        ),
        (_write(tmp_path / "e.jsonl", "\n"), out, str(tiny_model_dir), RecordError, r"e.jsonl: empty file"),
        (tmp_path / "none.jsonl", out, str(tiny_model_dir), RecordError, r"none.jsonl: file not found"),
        (good, tmp_path, str(tiny_model_dir), ConfigError, r"is a directory; give a file path"),
        (good, good, str(tiny_model_dir), ConfigError, r"is the input file"),
        (good, out, str(tmp_path / "no-model"), SrtError, r"--model: model folder .* does not exist"),
    ]
    for src, dst, model, error, match in cases:
        with pytest.raises(error, match=match):
            generate_file(model, src, dst, mode="plain", sampling={"max_new_tokens": 2})
    assert not (tmp_path / "answers").exists()
    # A damaged earlier output is reported before the model loads, not appended to.
    _write(out, '{"id": "a", "answer": "x"}\n{"id": \n{"id": "b"}\n')
    with pytest.raises(RecordError, match=r"a.jsonl:2: invalid JSON"):
        generate_file(str(tiny_model_dir), good, out, mode="plain", sampling={"max_new_tokens": 2})


def test_read_instructions_uses_the_shared_jsonl_loop(tmp_path):
    path = _write(tmp_path / "q.jsonl", '{"instruction": "a"}\n{"id": 7, "instruction": "b"}\n{"instruction": "c"')
    assert [(it["id"], it["instruction"]) for it in read_instructions(path)] == [("line-1", "a"), ("7", "b")]
    _write(path, '{"instruction": "a"}\n{"instruction": "\\ud800"}\n')
    with pytest.raises(RecordError, match=r"q.jsonl:2: field 'instruction': text is not valid Unicode"):
        read_instructions(path)


def test_judge_option_and_set_overrides_on_the_config(tmp_path):
    from srt.eval.runner import load_eval_config

    config = _write(tmp_path / "eval.yaml", "judge: {name: openai, model: gpt-4o, max_concurrency: 16}\n")
    assert load_eval_config(config, judge="openai").judge == {
        "name": "openai",
        "model": "gpt-4o",
        "max_concurrency": 16,
    }
    assert load_eval_config(config, judge="hf").judge == {"name": "hf"}  # another critic: the settings do not apply
    cfg = load_eval_config(config, ["judge.model=tiny", "benchmarks.gsm8k.limit=2"], judge="hf")
    assert cfg.judge == {"name": "hf", "model": "tiny"} and cfg.benchmarks == {"gsm8k": {"limit": 2}}
    assert load_eval_config(None, ["judge.model=gpt-4o"], judge="openai").judge == {"name": "openai", "model": "gpt-4o"}
    with pytest.raises(ConfigError, match="override 'judge' must look like key.subkey=value"):
        load_eval_config(config, ["judge"])
