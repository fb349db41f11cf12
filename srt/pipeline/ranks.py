"""Which process am I? Data steps (generation, critique) run once, on global rank 0.

Under torchrun or SLURM every rank starts the same ``srt-train`` command before any process group
exists; rank 0 generates and critiques while the others wait for its output files (on a shared
filesystem), then all ranks train together. ``ddp_spawn`` and Lightning's own ``ddp`` launcher
start the workers at ``Trainer.fit``, after rank 0 has written the data, so they never wait.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = os.environ.get("LOCAL_RANK", "0")
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    per_node = os.environ.get("LOCAL_WORLD_SIZE", "1")
    if local.isdigit() and node.isdigit() and per_node.isdigit():
        return int(node) * int(per_node) + int(local)
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0


def wait_for(path: Path, what: str, poll_s: float = 5.0, timeout_s: float | None = None) -> None:
    """Block a non-zero rank until rank 0 has written ``path``."""
    start = time.monotonic()
    log.info("rank %d: waiting for rank 0 to finish %s (%s)", global_rank(), what, path)
    while not path.exists():
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"rank {global_rank()}: {path} did not appear within {timeout_s} s")
        time.sleep(poll_s)
