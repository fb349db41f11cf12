"""``srt-train estimate``: what a run will ask its critics for, before anything is paid.

Per stage: the instructions, the critic calls (one critique per response and one separate re-score of
each refinement, so at most two per instruction), and, from critics that can say (the optional
plugin classmethod ``estimate(settings, prompts)``, e.g. the ``openai`` critic: its tokenizer count,
``max_tokens`` and configured prices), the prompt tokens, completion tokens and cost. Responses are
not generated yet, so each prompt holds a stand-in response of ``generation.response.max_new_tokens``
tokens: the figures are upper bounds for the prompt side and for the completions (every call at
``max_tokens``), and the calls count re-scores for every response (some critiques will not parse).
"""

from __future__ import annotations

from typing import Any

from srt.config import RunConfig
from srt.critic_template import render_critic_prompt


def _critic_estimate(critic: dict[str, Any], prompts: list[str]) -> dict[str, Any] | None:
    from srt.registry import CRITICS, load_plugin

    cls = load_plugin(CRITICS, critic["name"])
    estimate = getattr(cls, "estimate", None)
    if not callable(estimate):
        return None
    return dict(estimate({k: v for k, v in critic.items() if k != "name"}, prompts))


def estimate_run(cfg: RunConfig) -> list[dict[str, Any]]:
    from srt.pipeline.instructions import load_instructions
    from srt.pipeline.stage2 import round_instructions

    stand_in = " x" * cfg.generation.response.max_new_tokens  # about one token per " x"
    rows = []

    def add(stage: str, critic: dict[str, Any], instructions: list) -> None:
        prompts = [render_critic_prompt(i.instruction, stand_in) for i in instructions]
        row: dict[str, Any] = {
            "stage": stage,
            "critic": critic["name"],
            "instructions": len(instructions),
            "critic_calls": 2 * len(instructions),
        }
        est = _critic_estimate(critic, prompts + prompts)  # critique + re-score of each
        if est is not None:
            row.update(est)
        rows.append(row)

    if cfg.data.stage1 is not None:
        add("stage 1", cfg.critic, load_instructions(cfg.data.stage1))
    if cfg.data.stage2 is not None:
        for r in range(1, cfg.stage2.rounds + 1):
            add(f"stage 2 round {r}", cfg.stage2.critic, load_instructions(round_instructions(cfg, r)))
    return rows


def render_estimate(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | critic | instructions | critic calls (at most) | prompt tokens (at most) | "
        "completion tokens (at most) | cost USD (at most) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    total = 0.0
    unknown = False
    for row in rows:
        cost = row.get("cost_usd")
        if cost is None:
            unknown = unknown or "prompt_tokens" not in row
            cost_text = "-" if "prompt_tokens" not in row else "no price set"
        else:
            total += cost
            cost_text = f"{cost:.2f}"
        lines.append(
            f"| {row['stage']} | {row['critic']} | {row['instructions']} | {row['critic_calls']} | "
            f"{row.get('prompt_tokens', '-')} | {row.get('completion_tokens', '-')} | {cost_text} |"
        )
    lines.append("")
    lines.append(
        f"total cost at most: {total:.2f} USD"
        + (" (critics marked - give no estimate: local models cost compute, not API money)" if unknown else "")
    )
    return "\n".join(lines)
