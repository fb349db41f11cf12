"""A quiet terminal: the known, harmless warnings and banners of Lightning, transformers, lm-eval and
alpaca_eval are filtered out, so what is left is srt's own lines and one progress bar per step.

The CLIs call :func:`quiet_known_noise`; ``SRT_VERBOSE=1`` turns it off (everything is shown again).
Each filter names the exact message it hides and why it is harmless here; anything not listed shows.
"""

from __future__ import annotations

import logging
import os
import warnings

# (message regex, category, why it is harmless in srt)
_WARNINGS = [
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, "Lightning's own use of torch pytree"),
    (r".*Total length of `.*` across ranks is zero", UserWarning, "srt passes [] when there is no validation split"),
    (
        r".*The number of training batches .* is smaller than the logging interval",
        UserWarning,
        "small runs log less often than log_every_n_steps; metrics are still written",
    ),
    (
        r".*You passed in a `val_dataloader` but have no `validation_step`",
        UserWarning,
        "a module without validation (the reference pass) is given the shared data module",
    ),
    (r".*`is_gradient_checkpointing` is deprecated", FutureWarning, "transformers renaming, called by peft"),
    (r".*pkg_resources is deprecated as an API", UserWarning, "alpaca_eval imports it; pinned setuptools<81"),
    (
        r".*Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,
        "frozen reference / LoRA base modules are in eval mode on purpose",
    ),
    (
        r".*does not have many workers which may be a bottleneck",
        UserWarning,
        "tokenized data lives in memory; worker processes would only copy it",
    ),
    (r".*Checkpoint directory .* exists and is not empty", UserWarning, "srt resumes from that directory on purpose"),
    (
        r".*Experiment logs directory .* exists and is not empty",
        UserWarning,
        "srt appends to logs/metrics.csv across resumes (its own CSV writer)",
    ),
]
_LOGGERS = {
    # Lightning's start-up banners ("GPU available: ...", the LitLogger tip) and per-fit notices.
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning.fabric.utilities.seed": logging.WARNING,
    "lightning.pytorch.accelerators.cuda": logging.WARNING,
    # lm-eval's per-task INFO chatter (task building, caching notices).
    "lm-eval": logging.WARNING,
    "lm_eval": logging.WARNING,
}


def quiet_known_noise() -> bool:
    """Install the filters (once); returns False when ``SRT_VERBOSE`` asks for everything."""
    if os.environ.get("SRT_VERBOSE", "").lower() in ("1", "true", "yes"):
        return False
    for pattern, category, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name, level in _LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # transformers' "Loading weights" / "Writing model shards" bars (one bar per step is srt's own);
    # transformers reads this when it is imported, so the CLIs call this first.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return True


def setup_console_logging(level: int | str, format: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """What a process of srt's shows on its terminal: the secret filter on every log record
    (:func:`srt.secrets.install_log_filter`), the known noise quietened (:func:`quiet_known_noise`), and
    one handler on srt's own logger (Lightning and transformers keep theirs: no duplicate lines).
    The CLIs call it once at start-up; ``srt-eval run --workers`` calls it in each worker process."""
    from srt.secrets import install_log_filter

    install_log_filter()
    quiet_known_noise()  # SRT_VERBOSE=1 shows Lightning's, transformers' and lm-eval's notices again
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(format))
    srt_log = logging.getLogger("srt")
    srt_log.addHandler(handler)
    srt_log.setLevel(level)
