"""``srt-eval``: one harness for judged win rates, GSM8K and multilingual QA, on any model."""

from __future__ import annotations

import click

from srt.cli.common import echo_plugins, run_cli
from srt.registry import BENCHMARKS, CRITICS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="srt")
def cli() -> None:
    """Evaluate models (plain or SRT self-refinement answers) with benchmark plugins."""


@cli.command()
def plugins() -> None:
    """List installed benchmark and critic (judge) plugins and where they come from."""
    echo_plugins([BENCHMARKS, CRITICS])


def main() -> None:
    run_cli(cli)


if __name__ == "__main__":
    main()
