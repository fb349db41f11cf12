"""Judge agreement: does the model, acting as its own critic, prefer the human-preferred answer?

For each HH-RLHF-style pair the model scores the chosen and the rejected answer (1..10) with its
own critique; the pair counts as agreement only when ``score(chosen) > score(rejected)``
strictly (the paper's rule). A tie, or a pair where either score cannot be parsed, counts as
disagreement; both are reported (``ties``, ``parse_failures``).

How the model critiques (``scoring:``): ``srt`` places the answer in its assistant turn followed
by ``### Feedback`` and lets it write the feedback (the SRT format, :func:`self_critique_prefix`);
``critic_prompt`` sends the critic prompt as a user message (for plain chat models). ``auto``
(default) picks ``srt`` for models evaluated with ``answer_mode: srt`` or ``gated``, else ``critic_prompt``.

Data (``data:``): ``fixture`` (16 hand-written pairs shipped with srt), a local JSONL with either
``{instruction, chosen, rejected}`` or HH-RLHF transcripts ``{chosen, rejected}`` (``\\n\\nHuman:
... \\n\\nAssistant: ...``; the shared conversation up to the last assistant turn is the prompt),
or ``hub`` for ``Anthropic/hh-rlhf`` (test split; the paper uses 500 pairs: ``limit: 500``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from srt.errors import SrtError
from srt.eval.benchmark import BenchmarkResult, EvalContext, writes_srt_turn
from srt.eval.data import DataRows
from srt_builtin.benchmarks._settings import BenchmarkSettings, parse_settings
from srt_builtin.benchmarks.alpaca_winrate import DATA_DIR, file_digest, mean

FIXTURE = DATA_DIR / "hh_rlhf_pairs.jsonl"
HUB_ID = "Anthropic/hh-rlhf"
_ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh_transcripts(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """(prompt, chosen answer, rejected answer) from two HH-RLHF transcripts, or None when the two
    do not share the conversation before their last assistant turn."""
    c, r = chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT)
    if c < 0 or r < 0 or chosen[:c] != rejected[:r]:
        return None
    return chosen[:c], chosen[c + len(_ASSISTANT) :].strip(), rejected[r + len(_ASSISTANT) :].strip()


def hh_prompt_to_instruction(prompt: str) -> str:
    """A single human turn becomes the instruction as is; a longer conversation is kept as a
    labeled transcript (``Human: ...`` / ``Assistant: ...``) so the model sees the context."""
    turns = [(m.group(1), m.end()) for m in _TURN.finditer(prompt)]
    if not turns:
        return prompt.strip()
    if len(turns) == 1 and turns[0][0] == "Human":
        return prompt[turns[0][1] :].strip()
    return prompt.strip()


def load_pairs(data: str, limit: int | None) -> tuple[list[dict[str, Any]], str, int]:
    """(pairs with id/instruction/chosen/rejected, data identity, number of pairs skipped)."""
    if data == "hub":
        hub_rows, identity = _load_hub(limit), f"hub:{HUB_ID}/test"
        rows: Any = None
        numbered = ((i + 1, "", row) for i, row in enumerate(hub_rows))
    else:
        path = FIXTURE if data == "fixture" else Path(data).expanduser()
        rows = DataRows(path, "judge_agreement data file")
        identity = f"{path.name}:sha256:{file_digest(path)}"
        numbered = iter(rows)
    pairs, skipped = [], 0
    for n, raw, row in numbered:
        if not all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
            reason = "needs string 'chosen' and 'rejected'"
            if rows is None:
                raise SrtError(f"{identity}: row {n}: {reason}")
            rows.bad(n, raw, reason)
        if isinstance(row.get("instruction"), str):
            instruction, chosen, rejected = row["instruction"], row["chosen"], row["rejected"]
        else:
            split = split_hh_transcripts(row["chosen"], row["rejected"])
            if split is None:
                skipped += 1  # the two transcripts differ before the last answer: not a clean pair
                continue
            prompt, chosen, rejected = split
            instruction = hh_prompt_to_instruction(prompt)
        pairs.append(
            {"id": str(row.get("id", f"pair-{n}")), "instruction": instruction, "chosen": chosen, "rejected": rejected}
        )
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise SrtError(f"judge_agreement data {identity} holds no usable pairs")
    return pairs, identity, skipped


def _load_hub(limit: int | None) -> list[dict[str, Any]]:
    try:
        import datasets

        split = "test" if limit is None else f"test[:{limit}]"
        return list(datasets.load_dataset(HUB_ID, split=split))
    except Exception as err:
        raise SrtError(
            f"cannot load {HUB_ID} from the hub: {type(err).__name__}: {err}. Offline, use the shipped "
            "fixture (data: fixture) or a local JSONL of pairs"
        ) from err


class JudgeAgreementSettings(BenchmarkSettings):
    """``benchmarks: {judge_agreement: {...}}`` (unknown keys are an error)."""

    data: str = Field(
        "fixture",
        description="`fixture` (16 hand-written pairs shipped with srt), a local JSONL/JSON file of "
        "`{instruction, chosen, rejected}` or HH-RLHF transcripts `{chosen, rejected}`, or `hub` "
        "(Anthropic/hh-rlhf test split; needs the network)",
    )
    limit: int | None = Field(None, ge=1, description="Use the first N usable pairs only (the paper: 500)")
    scoring: Literal["auto", "srt", "critic_prompt"] = Field(
        "auto",
        description="How the model critiques: `srt` (feedback inside its assistant turn), `critic_prompt` (the "
        "critic prompt as a user message), `auto` (srt for models with answer_mode srt or gated, else "
        "critic_prompt)",
    )


class JudgeAgreementBenchmark:
    """Agreement of the model's own scores with human preferences (see the module docstring)."""

    name = "judge_agreement"
    uses_judge = False  # the model is the judge
    settings_model = JudgeAgreementSettings

    @classmethod
    def check_settings(cls, settings: JudgeAgreementSettings) -> None:
        """Plan check, nothing loaded: a local data file is readable and holds usable pairs."""
        if settings.data != "hub":
            load_pairs(settings.data, settings.limit)

    def __init__(self, settings: dict[str, Any]):
        self.settings = parse_settings(self.name, self.settings_model, settings)
        self.pairs, self.data_identity, self.skipped = load_pairs(self.settings["data"], self.settings["limit"])

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> JudgeAgreementBenchmark:
        return cls(dict(settings))

    def describe(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            **self.settings,
            "data_identity": self.data_identity,
            "num_pairs": len(self.pairs),
        }

    def run(self, model: Any, ctx: EvalContext) -> BenchmarkResult:
        via = self.settings["scoring"]
        if via == "auto":
            via = "srt" if writes_srt_turn(model.answer_mode) else "critic_prompt"
        items = [
            {"id": f"{p['id']}:{side}", "instruction": p["instruction"], "response": p[side]}
            for p in self.pairs
            for side in ("chosen", "rejected")
        ]
        scores = model.self_scores(items, "self_scores", via=via, cache_dir=ctx.cache_dir)

        samples, agree, ties, failures = [], 0, 0, 0
        for k, pair in enumerate(self.pairs):
            chosen, rejected = scores[2 * k], scores[2 * k + 1]
            sc, sr = chosen["score"], rejected["score"]
            if sc is None or sr is None:
                outcome = "parse_failure"
                failures += 1
            elif sc > sr:
                outcome = "agree"
                agree += 1
            elif sc == sr:
                outcome = "tie"
                ties += 1
            else:
                outcome = "disagree"
            samples.append(
                {
                    **pair,
                    "score_chosen": sc,
                    "score_rejected": sr,
                    "outcome": outcome,
                    "feedback_chosen": chosen["feedback"],
                    "feedback_rejected": rejected["feedback"],
                    "failure_chosen": chosen["failure"],
                    "failure_rejected": rejected["failure"],
                }
            )
        n = len(self.pairs)
        chosen_scores = [s["score_chosen"] for s in samples if s["score_chosen"] is not None]
        rejected_scores = [s["score_rejected"] for s in samples if s["score_rejected"] is not None]
        metrics = {
            "agreement": 100 * agree / n,
            "ties": ties,
            "parse_failures": failures,
            "n_pairs": n,
            "score_parse_rate": 100 * (len(chosen_scores) + len(rejected_scores)) / (2 * n),
            "mean_score_chosen": mean(chosen_scores),
            "mean_score_rejected": mean(rejected_scores),
        }
        warnings_ = []
        if self.skipped:
            warnings_.append(f"{self.skipped} pairs skipped: chosen and rejected differ before the last assistant turn")
        if failures:
            warnings_.append(f"{failures}/{n} pairs have an unparseable self score (counted as disagreement)")
        if self.settings["data"] != "hub":
            warnings_.append(f"custom pair set ({n} pairs, {self.data_identity}), not the paper's 500 HH-RLHF pairs")
        meta = {"scoring": via, "data": self.data_identity, "skipped_pairs": self.skipped, "warnings": warnings_}
        plots = {"self_scores_chosen": chosen_scores, "self_scores_rejected": rejected_scores}
        return BenchmarkResult(metrics=metrics, samples=samples, meta=meta, plots=plots)
