"""``srt-eval``: one harness for judged win rates, GSM8K and multilingual QA, on any model."""

from __future__ import annotations

import click

from srt.cli.common import check_plugins_option, echo_plugins, run_cli
from srt.eval.benchmark import ANSWER_MODES
from srt.registry import BENCHMARKS, CRITICS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="srt")
def cli() -> None:
    """Evaluate models (plain or SRT self-refinement answers) with benchmark plugins."""


@cli.command()
@check_plugins_option
def plugins(check: bool) -> None:
    """List installed benchmark and critic (judge) plugins and where they come from."""
    echo_plugins([BENCHMARKS, CRITICS], check=check)


def run_options(f):
    """The options `run` and `validate` share (validate checks exactly what run would run)."""
    options = [
        click.option(
            "--model",
            "models",
            multiple=True,
            metavar="[NAME=]PATH",
            help="Model folder, hub id or 'tiny' (repeatable; compared side by side). Replaces the config's models.",
        ),
        click.option("--benchmarks", default=None, help="Comma-separated benchmark plugins, e.g. alpaca_eval,gsm8k."),
        click.option(
            "--config", "config_path", type=click.Path(dir_okay=False), default=None, help="Eval YAML config."
        ),
        click.option("--output", "output_dir", default=None, help="Output directory (default from config)."),
        click.option(
            "--answer-mode",
            type=click.Choice(list(ANSWER_MODES)),
            default=None,
            help="For every model: plain (the model's answer), srt (response -> feedback -> refinement, "
            "the refinement is the answer) or gated (the refinement only when the model's own re-score of it "
            "beats its response's, else the response). One model: --mode.",
        ),
        click.option(
            "--mode",
            "modes",
            multiple=True,
            metavar="NAME=MODE",
            help="One model's answer mode, plain, srt or gated (repeatable; after --answer-mode), e.g. "
            "--model base=PATH --model srt=PATH2 --mode srt=srt. Config: models[].answer_mode.",
        ),
        click.option(
            "--limit",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Every benchmark on its first N samples (per language for tydiqa/mgsm), replacing "
            "benchmarks.*.limit: a smoke test.",
        ),
        click.option(
            "--device",
            default=None,
            metavar="DEVICE",
            help="Every model's device: cpu, cuda, cuda:N or auto (cuda when a GPU is visible). Config: models[].device "
            "(an hf judge's: --set judge.device=...).",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default=None,
            help="Every model's load dtype (auto: the checkpoint's; on a CPU float32 is usually much faster than "
            "bfloat16). Config: models[].dtype.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Every model's prompts per generate call. Config: models[].batch_size.",
        ),
        click.option(
            "--max-new-tokens",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Budget of every generation: models[].sampling/candidate_sampling/score_sampling.max_new_tokens "
            "(default 1024 for answers, the whole SRT turn; 512 for self-scores) and lm-eval's max_gen_toks.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            default=None,
            metavar="N",
            help="Models evaluated at once, each in its own process with 1/N of the CPU threads (CPU models "
            "only). Config: workers.",
        ),
        click.option(
            "--judge",
            default=None,
            help="Critic plugin used as judge (replaces the config's judge). Judge settings: --set judge.KEY=VALUE.",
        ),
        click.option("--seed", type=int, default=None),
        click.option(
            "--set",
            "overrides",
            multiple=True,
            metavar="KEY=VALUE",
            help="Dotted override of the config (repeatable; values are YAML), applied before the other flags: "
            "judge settings --set judge.KEY=VALUE (e.g. --set judge.model=gpt-4o, --set judge.max_new_tokens=64), "
            "--set benchmarks.gsm8k.num_fewshot=4.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@run_options
def run(models, benchmarks, config_path, output_dir, answer_mode, judge, seed, overrides, **flags) -> None:
    """Run benchmarks on one or more models; writes per-sample JSONL, summary.json, report.md and plots.

    Everything is checked first (the plan of `srt-eval validate`); then the output directory is
    locked for the run (a second run there stops at once).
    """
    from pathlib import Path

    from srt.eval.runner import cli_run

    _need_models(models, config_path)
    summary = cli_run(
        models,
        benchmarks,
        config_path,
        output_dir,
        seed=seed,
        judge=judge,
        answer_mode=answer_mode,
        overrides=overrides,
        **flags,
    )
    out = Path(summary["run"]["output_dir"])
    if (out / "report.md").is_file():
        click.echo((out / "report.md").read_text(encoding="utf-8"))
    click.echo(f"results: {out}/summary.json, {out}/report.md")


@cli.command()
@run_options
def validate(models, benchmarks, config_path, output_dir, answer_mode, judge, seed, overrides, **flags) -> None:
    """Check an evaluation without running it: models found, benchmark settings and data files, the judge's
    settings and API key variable, the output directory. Loads no model, writes nothing; exit status 2 on
    the first problem."""
    from srt.eval.runner import cli_plan

    _need_models(models, config_path)
    plan = cli_plan(
        models,
        benchmarks,
        config_path,
        output_dir,
        seed=seed,
        judge=judge,
        answer_mode=answer_mode,
        overrides=overrides,
        **flags,
    )
    click.echo(plan.describe())
    click.echo("ok: nothing to fix")


def _need_models(models, config_path) -> None:
    from srt.errors import ConfigError

    if not models and not config_path:
        raise ConfigError("give at least one --model (or a --config with models)")


@cli.command()
@click.option("--model", "model_path", required=True, help="Model folder, hub id or 'tiny'.")
@click.option(
    "--input", "input_path", required=True, type=click.Path(dir_okay=False), help="JSONL of {id?, instruction}."
)
@click.option(
    "--output", "output_path", required=True, type=click.Path(dir_okay=False), help="Output JSONL (resumable)."
)
@click.option(
    "--mode",
    type=click.Choice(["srt", "plain", "rerank", "gated"]),
    default="srt",
    show_default=True,
    help="srt: the refinement is the answer; rerank: best-of-N by self-score; gated: the refinement only "
    "when its self-score beats the response's.",
)
@click.option("--n", type=int, default=16, show_default=True, help="Candidates for --mode rerank.")
@click.option("--temperature", type=float, default=None)
@click.option("--max-new-tokens", type=int, default=None)
@click.option("--batch-size", type=int, default=8, show_default=True)
def generate(model_path, input_path, output_path, mode, n, temperature, max_new_tokens, batch_size) -> None:
    """Answer instructions with self-refinement (or plain / best-of-N re-ranking); keeps the full trace."""
    import json

    from srt.eval.runner import generate_file

    sampling = {
        k: v for k, v in {"temperature": temperature, "max_new_tokens": max_new_tokens}.items() if v is not None
    }
    stats = generate_file(
        model_path, input_path, output_path, mode=mode, n=n, sampling=sampling or None, batch_size=batch_size
    )
    click.echo(json.dumps({k: v for k, v in stats.items() if k != "model"}, indent=2))


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
