"""`srt-train estimate`: critic calls, tokens and cost before anything is paid, from the template,
the critic's max_tokens and its prices; nothing generated or sent."""

import sys
from pathlib import Path

import pytest
import yaml

from srt.config import RunConfig
from srt.critic_template import render_critic_prompt
from srt.pipeline.estimate import estimate_run, render_estimate

DATA = Path(__file__).resolve().parents[1] / "configs" / "data" / "word_problems_stage1.jsonl"


def config(**critic) -> RunConfig:
    fields = {"id": "id", "instruction": "instruction", "reference": "answer"}
    return RunConfig.model_validate(
        {
            "data": {
                "stage1": {"path": str(DATA), "fields": fields, "limit": 10},
                "stage2": {"path": str(DATA), "fields": fields, "offset": 10, "limit": 4},
            },
            "generation": {"response": {"max_new_tokens": 100}},
            "critic": {"name": "openai", "model": "gpt-4o", "api_key_env": None, "max_tokens": 500, **critic},
            "stage2": {"critic": {"name": "self"}, "rounds": 2, "instructions_per_round": 2},
        }
    )


def test_estimate_counts_calls_tokens_and_cost_from_template_and_prices():
    rows = estimate_run(config(price_per_1k_prompt=2.5, price_per_1k_completion=10.0))
    stage1, round1, round2 = rows
    assert (stage1["instructions"], stage1["critic_calls"]) == (10, 20)  # critique + re-score of each
    assert (round1["instructions"], round2["instructions"]) == (2, 2) and round1["critic"] == "self"
    assert "cost_usd" not in round1  # the self critic runs locally: no estimate of money
    one = len(render_critic_prompt("x", " x" * 100)) // 4
    assert stage1["prompt_tokens"] > 20 * one  # the template alone, 20 times, plus the instructions
    assert stage1["completion_tokens"] == 20 * 500
    assert stage1["cost_usd"] == pytest.approx((stage1["prompt_tokens"] * 2.5 + 20 * 500 * 10.0) / 1000, abs=1e-4)
    text = render_estimate(rows)
    assert f"| stage 1 | openai | 10 | 20 | {stage1['prompt_tokens']} | 10000 |" in text
    assert f"total cost at most: {stage1['cost_usd']:.2f} USD" in text


def test_estimate_without_prices_says_so(tmp_path):
    rows = estimate_run(config())
    assert rows[0]["cost_usd"] is None and "no price set" in render_estimate(rows)


def test_estimate_command(tmp_path, monkeypatch, capsys):
    from srt.cli.train import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(price_per_1k_prompt=1.0).model_dump(mode="json")))
    monkeypatch.setattr(sys, "argv", ["srt-train", "estimate", "--config", str(path)])
    main()
    out = capsys.readouterr().out
    assert "| stage 1 | openai | 10 | 20 |" in out and "total cost at most" in out
