"""Shared CLI plumbing: user mistakes print one clear line and exit non-zero, never a traceback."""

from __future__ import annotations

import os
import sys

import click

from srt.errors import SrtError
from srt.registry import list_plugins


def run_cli(group: click.Group) -> None:
    """Entry point wrapper.

    * a user mistake (SrtError: config, input data, plugin contract, training setup) -> one line
      ``Error: <message>`` on stderr, exit status 2 (``SRT_DEBUG=1`` shows the traceback);
    * SIGTERM/SIGINT (:mod:`srt.interrupt`) -> one line saying what was saved, exit 128 + signal;
    * a real bug keeps its traceback (exit 1).
    Nothing printed or logged can hold a registered secret (:func:`srt.secrets.install_log_filter`).
    """
    from srt import interrupt
    from srt.quiet import setup_console_logging
    from srt.secrets import scrub_text

    setup_console_logging(os.environ.get("SRT_LOG_LEVEL", "INFO"))
    try:
        with interrupt.handle_signals():
            group.main(standalone_mode=False)
    except interrupt.Interrupted as exc:
        click.echo(f"Interrupted: {scrub_text(exc.message())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors: click's own one-liners
        exc.show()
        sys.exit(exc.exit_code)
    except SrtError as exc:
        click.echo(f"Error: {scrub_text(str(exc))}", err=True)
        if os.environ.get("SRT_DEBUG"):
            raise
        sys.exit(2)


def echo_plugins(groups: list[str], check: bool = False) -> None:
    """Installed plugins from their entry points; nothing is imported unless ``check`` (then each plugin
    is imported and a broken one is reported with its error)."""
    for group in groups:
        click.echo(f"{group}:")
        infos = list_plugins(group, check=check)
        if not infos:
            click.echo("  (none installed)")
        for info in infos:
            status = ("  [ok]" if info.ok else f"  [FAILED: {info.error}]") if check else ""
            click.echo(f"  {info.name:<18} {info.distribution} {info.version:<10} {info.value}{status}")


check_plugins_option = click.option("--check", is_flag=True, help="Import each plugin and report the ones that fail.")


config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), required=True, help="YAML run config."
)
restart_option = click.option(
    "--restart",
    "restart",
    default=None,
    metavar="STEP",
    help="Redo STEP (e.g. stage1.sft) and every step after it; earlier outputs move to <output_dir>/superseded/.",
)
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Dotted override, e.g. --set sft.epochs=2 (repeatable).",
)
