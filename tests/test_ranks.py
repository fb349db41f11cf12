"""Rank detection for torchrun/SLURM launches, and non-zero ranks waiting for rank 0's data."""

import threading
import time

import pytest

from srt.pipeline.ranks import global_rank, wait_for


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"SLURM_PROCID": "5"}, 5),
        ({"LOCAL_RANK": "1", "NODE_RANK": "2", "LOCAL_WORLD_SIZE": "4"}, 9),
    ],
)
def test_global_rank(monkeypatch, env, expected):
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert global_rank() == expected


def test_wait_for_returns_once_rank_zero_wrote_the_file(tmp_path):
    target = tmp_path / "report.json"
    threading.Timer(0.3, target.write_text, args=("{}",)).start()
    start = time.monotonic()
    wait_for(target, "data", poll_s=0.05, timeout_s=10)
    assert target.exists() and time.monotonic() - start >= 0.25
    with pytest.raises(TimeoutError):
        wait_for(tmp_path / "never.json", "data", poll_s=0.01, timeout_s=0.1)


def test_non_zero_rank_does_not_generate(tmp_path, monkeypatch, tiny_model_dir):
    """A rank > 0 must wait for rank 0's stage-1 data instead of generating and calling the critic."""
    from srt.config import RunConfig
    from srt.pipeline import stage1

    monkeypatch.setenv("RANK", "1")
    (tmp_path / "q.jsonl").write_text('{"instruction": "2 + 2?", "answer": "4"}\n')
    cfg = RunConfig.model_validate(
        {
            "output_dir": str(tmp_path),
            "model": {"path": str(tiny_model_dir)},
            "data": {
                "stage1": {
                    "path": str(tmp_path / "q.jsonl"),
                    "fields": {"instruction": "instruction", "reference": "answer"},
                }
            },
        }
    )
    waited = []
    monkeypatch.setattr(stage1, "wait_for", lambda path, what: waited.append(path) or (_ for _ in ()).throw(SystemExit))
    with pytest.raises(SystemExit):
        stage1.run_stage1(cfg)
    assert waited == [tmp_path / "stage1" / "report.json"]
    assert (
        not (tmp_path / "stage1" / "responses.jsonl").exists() and not (tmp_path / "stage1" / "manifest.json").exists()
    )
