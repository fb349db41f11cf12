"""Shared CLI plumbing: user mistakes print one clear line and exit non-zero, never a traceback."""

from __future__ import annotations

import logging
import os
import sys

import click

from srt.errors import SrtError
from srt.registry import list_plugins


def run_cli(group: click.Group) -> None:
    """Entry point wrapper: SrtError -> ``Error: <message>`` on stderr, exit status 2."""
    # Only srt's own logger gets a handler: Lightning and transformers keep theirs (no duplicates).
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    srt_log = logging.getLogger("srt")
    srt_log.addHandler(handler)
    srt_log.setLevel(os.environ.get("SRT_LOG_LEVEL", "INFO"))
    try:
        group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: click's own one-liners
        exc.show()
        sys.exit(exc.exit_code)
    except SrtError as exc:
        click.echo(f"Error: {exc}", err=True)
        if os.environ.get("SRT_DEBUG"):
            raise
        sys.exit(2)


def echo_plugins(groups: list[str]) -> None:
    for group in groups:
        click.echo(f"{group}:")
        infos = list_plugins(group)
        if not infos:
            click.echo("  (none installed)")
        for info in infos:
            status = "ok" if info.ok else f"FAILED: {info.error}"
            click.echo(f"  {info.name:<18} {info.distribution} {info.version:<10} {info.value}  [{status}]")


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), required=True, help="YAML run config."
)
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Dotted override, e.g. --set sft.epochs=2 (repeatable)."
)
