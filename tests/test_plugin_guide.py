"""docs/plugins.md: its minimal critic is built from the page, pip-installed, and runs a real stage 1;
a critic that breaks the protocol stops the run with one line naming it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "plugins.md"
DATA = REPO / "configs" / "data" / "word_problems_stage1.jsonl"
CLI = "import sys; from srt.cli.train import main; sys.argv=['srt-train', *sys.argv[1:]]; main()"

pytestmark = pytest.mark.slow


def _block(text: str, first_line: str) -> str:
    match = re.search(r"```\w*\n" + re.escape(first_line) + r"\n(.*?)```", text, re.S)
    assert match, f"no code block starting with {first_line!r} in {GUIDE}"
    return match.group(1)


def _install(package_dir: Path, site: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(package_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]


def _stage1(tmp_path: Path, model_dir: Path, critic: dict, site: Path) -> subprocess.CompletedProcess:
    cfg = {
        "output_dir": str(tmp_path / "run"),
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"stage1": {"path": str(DATA), "fields": {"id": "id", "instruction": "instruction"}, "limit": 4}},
        "generation": {"batch_size": 4, "response": {"max_new_tokens": 8}},
        "critic": critic,
        "sft": {"epochs": 1, "micro_batch_size": 2, "global_batch_size": 2, "max_length": 512},
        "trainer": {"accelerator": "cpu", "precision": "32-true"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", CLI, "stage1", "--config", str(tmp_path / "run.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_the_guides_minimal_critic_installs_and_runs_stage1(tmp_path, tiny_model_dir):
    text = GUIDE.read_text(encoding="utf-8")
    package = tmp_path / "minimal-critic"
    (package / "minimal_critic").mkdir(parents=True)
    (package / "minimal_critic" / "__init__.py").write_text(_block(text, "# minimal_critic/__init__.py"))
    (package / "setup.cfg").write_text(_block(text, "# setup.cfg"))
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    site = tmp_path / "site"
    _install(package, site)

    # The settings model it declares is checked before anything runs.
    res = _stage1(tmp_path, tiny_model_dir, {"name": "minimal", "min_wrds": 8}, site)
    assert res.returncode == 2 and "min_wrds: unknown key" in res.stderr and "Traceback" not in res.stderr

    res = _stage1(tmp_path, tiny_model_dir, {"name": "minimal", "min_words": 50}, site)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "stage1" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["critic"]["name"] == "minimal" for r in records)
    assert all(r["feedback"]["score"] == 3 and r["refinement_score"] == 3 for r in records)  # re-scored separately
    assert all(r["refinement"].endswith("Here is why, step by step.") for r in records)
    assert (tmp_path / "run" / "stage1" / "model" / "srt_done.json").is_file()


BROKEN = """
from srt.critic import CritiqueReply


class BrokenCritic:
    name = "broken"

    @classmethod
    def from_config(cls, settings, policy=None):
        return cls()

    def describe(self):
        return {"name": self.name}

    def critique(self, requests):
        return [CritiqueReply(text="Weaknesses:\\n- x") for _ in requests[1:]]  # one reply short
"""


def test_a_critic_that_breaks_the_protocol_is_one_error_line_naming_it(tmp_path, tiny_model_dir):
    package = tmp_path / "broken-critic"
    (package / "broken_critic").mkdir(parents=True)
    (package / "broken_critic" / "__init__.py").write_text(BROKEN)
    (package / "setup.cfg").write_text(
        "[metadata]\nname = broken-critic\nversion = 0.1.0\n[options]\npackages = "
        "broken_critic\n[options.entry_points]\nsrt.critics =\n    broken = "
        "broken_critic:BrokenCritic\n"
    )
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    site = tmp_path / "site"
    _install(package, site)
    res = _stage1(tmp_path, tiny_model_dir, {"name": "broken"}, site)
    assert res.returncode == 2 and res.stderr.count("Error:") == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert (
        "Error: critic plugin 'broken' (broken_critic.BrokenCritic) broke the critic protocol: 3 replies for 4 requests"
        in res.stderr
    )
