"""``srt-train``: stage 1 (critic feedback -> SFT), stage 2 (self-feedback -> DPO), or both."""

from __future__ import annotations

import click

from srt.cli.common import check_plugins_option, config_option, echo_plugins, restart_option, run_cli, set_option
from srt.config import load_config
from srt.registry import BENCHMARKS, CRITICS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="srt")
def cli() -> None:
    """Self-Refinement Tuning: train a model to answer, critique and refine its own answers.

    \b
    stage1  instructions -> responses -> critic feedback + refinements -> SFT
    stage2  stage-1 model critiques itself -> preference pairs -> DPO
    run     stage 1 then stage 2 (stage2.rounds times) in one output tree
    Every command resumes when re-run with the same config and output directory.
    """


@cli.command()
@check_plugins_option
def plugins(check: bool) -> None:
    """List installed critic and benchmark plugins and where they come from."""
    echo_plugins([CRITICS, BENCHMARKS], check=check)


@cli.command()
@config_option
@set_option
@click.option(
    "--command",
    "command",
    type=click.Choice(["run", "stage1", "stage2"]),
    default="run",
    show_default=True,
    help="The command to plan for.",
)
@click.option("--model", "model_path", default=None, help="Stage-1 model folder, as for `srt-train stage2 --model`.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the plan, not the resolved config.")
def validate(config_path: str, overrides: tuple[str, ...], command: str, model_path: str | None, quiet: bool) -> None:
    """Check a run before running it: the same plan `run` makes (plugins and their settings, API key
    variables, data and field mappings, model, trainer, batch sizes, output directory), and that an
    existing output directory was made with these settings. Loads no weights; exit status 2 on the
    first problem."""
    import yaml

    from srt.config import config_to_dict
    from srt.pipeline.plan import plan_run
    from srt.pipeline.steps import StepRecord, check_drift

    cfg = load_config(config_path, overrides)
    plan = plan_run(cfg, command, start_model=model_path)
    check_drift(plan.steps, StepRecord(cfg.output_dir))
    if not quiet:
        click.echo(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    click.echo(plan.describe())
    click.echo("ok: nothing to fix")


@cli.command()
@config_option
@set_option
def estimate(config_path: str, overrides: tuple[str, ...]) -> None:
    """Before spending: critic calls, tokens and cost per stage (upper bounds, from the critic prompt
    template, each critic's max_tokens and configured prices). Nothing is generated or sent."""
    from srt.pipeline.estimate import estimate_run, render_estimate

    click.echo(render_estimate(estimate_run(load_config(config_path, overrides))))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["sft-messages", "prompt-completion", "preference"]),
    required=True,
    help="sft-messages / prompt-completion: stage-1 examples for TRL's SFTTrainer; preference: stage-2 "
    "pairs for DPOTrainer.",
)
@click.option("--output", "output_dir", default=None, help="Output folder (default: RUN_DIR/export).")
def export(run_dir: str, fmt: str, output_dir: str | None) -> None:
    """A run's training data in TRL's formats: JSONL and a datasets.save_to_disk folder."""
    from srt.pipeline.export_data import export_dataset

    info = export_dataset(run_dir, fmt, output_dir)
    click.echo(f"{info['rows']} rows: {info['jsonl']} and {info['dataset']} (datasets.load_from_disk)")


@cli.command("config-reference")
@click.option("--output", "output", type=click.Path(dir_okay=False), default=None, help="Write here (default: stdout).")
def config_reference_cmd(output: str | None) -> None:
    """Print the run-config reference (every key, type, default, description) as Markdown."""
    from srt.config import config_reference

    text = config_reference() + "\n"
    if output:
        from srt.io import atomic_write_text

        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)


@cli.command("check-records")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["feedback", "pair", "instruction"]), default="feedback", show_default=True)
@click.option(
    "--lenient", is_flag=True, help="Write bad lines to a rejects file (with the reason) instead of stopping."
)
@click.option("--rejects", "rejects_path", default=None, help="Rejects file (default: PATH.rejects.jsonl).")
def check_records(path: str, kind: str, lenient: bool, rejects_path: str | None) -> None:
    """Validate a records JSONL file: the first bad line stops with file:line: reason (or --lenient)."""
    from srt.records import FeedbackRecord, InstructionRecord, JsonlReader, PreferencePair

    model = {"feedback": FeedbackRecord, "pair": PreferencePair, "instruction": InstructionRecord}[kind]
    reader = JsonlReader(path, model, lenient=lenient, rejects_path=rejects_path, allow_empty=False)
    for _ in reader:
        pass
    click.echo(
        f"{path}: {reader.read} valid {kind} records, {reader.rejected} rejected"
        + (f" (see {reader.rejects_path})" if reader.rejected else "")
        + (", unterminated last line skipped" if reader.truncated_tail else "")
    )


@cli.command()
@config_option
@set_option
@click.option("--show", "show", type=int, default=3, show_default=True, help="Number of examples to print.")
@click.option(
    "--records",
    "records_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Feedback records JSONL (default: the stage-1 records of the run's output directory).",
)
@click.option("--view", type=click.Choice(["sft", "dpo"]), default="sft", show_default=True)
def preprocess(config_path: str, overrides: tuple[str, ...], show: int, records_path: str | None, view: str) -> None:
    """Tokenize training data and print examples with the trained tokens marked."""
    from srt.pipeline.preview import preview_from_config

    cfg = load_config(config_path, overrides)
    click.echo(preview_from_config(cfg, records_path=records_path, n=show, view=view))


@cli.command()
@config_option
@set_option
@restart_option
def stage1(config_path: str, overrides: tuple[str, ...], restart: str | None) -> None:
    """Generate, critique, filter, and SFT on response -> feedback -> refinement."""
    from srt.pipeline.run import execute

    cfg = load_config(config_path, overrides)
    _finished(cfg.output_dir, execute(cfg, "stage1", config_path=config_path, restart=restart))


@cli.command()
@config_option
@set_option
@restart_option
@click.option("--model", "model_path", default=None, help="Stage-1 model folder (default: the run's stage-1 model).")
def stage2(config_path: str, overrides: tuple[str, ...], restart: str | None, model_path: str | None) -> None:
    """Self-feedback preference pairs from the stage-1 model, then DPO."""
    from srt.pipeline.run import execute

    cfg = load_config(config_path, overrides)
    _finished(cfg.output_dir, execute(cfg, "stage2", config_path=config_path, start_model=model_path, restart=restart))


@cli.command()
@config_option
@set_option
@restart_option
def run(config_path: str, overrides: tuple[str, ...], restart: str | None) -> None:
    """Stage 1 then stage 2 (stage2.rounds rounds) in one output tree; resumable at any step."""
    from srt.pipeline.run import execute

    cfg = load_config(config_path, overrides)
    _finished(cfg.output_dir, execute(cfg, "run", config_path=config_path, restart=restart))


def _finished(output_dir: str, model_dir) -> None:
    """The end-of-run summary (also in <output_dir>/summary.md), then where the final model is."""
    from pathlib import Path

    from srt.pipeline.ranks import is_rank_zero

    summary = Path(output_dir) / "summary.md"
    if is_rank_zero() and summary.is_file():
        click.echo(summary.read_text(encoding="utf-8"))
        click.echo(f"final model: {model_dir}\nsummary: {summary}")


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
