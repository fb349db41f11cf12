"""Training checkpoints that survive kills: atomic writes, the previous one kept, damage detected,
exact resume, and a clean stop on SIGTERM/SIGINT.

* :class:`AtomicCheckpointIO` writes ``last.ckpt`` to a temporary file, fsyncs it and renames it into
  place; the checkpoint it replaces is kept as ``last.prev.ckpt``. A kill during a save leaves the
  old checkpoint (or both) intact.
* :func:`resume_checkpoint` picks the newest checkpoint that is whole (zip structure and CRCs of a
  ``torch.save`` file, ``.metadata`` of a sharded folder); a damaged one is renamed
  ``*.damaged`` with a warning, and when none is left the error names the file and the way out.
* :class:`ResumeRNG` stores the RNG streams (torch, CUDA, numpy, python) in the checkpoint and puts
  them back right before the first batch after a resume, so dropout draws what an uninterrupted run
  would have drawn. The train loader's position travels in the checkpoint too
  (:class:`srt.data.ResumableDataLoader`), so a resumed run continues mid-epoch with the same batches.
* :class:`StopOnSignal` stops training at the next optimizer-step boundary after SIGTERM/SIGINT
  (:mod:`srt.interrupt`), saves a checkpoint and raises :class:`~srt.interrupt.Interrupted`.
"""

from __future__ import annotations

import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from srt import interrupt
from srt.errors import TrainingError

log = logging.getLogger(__name__)

LAST = "last.ckpt"
PREVIOUS = "last.prev.ckpt"
_FULL_CRC_LIMIT = 4 << 30  # verify every CRC up to this size; bigger files: structure + metadata CRCs


class CheckpointError(TrainingError):
    """No usable checkpoint where one is needed."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file, fsync, keep the replaced ``last.ckpt`` as ``last.prev.ckpt``,
    rename into place. Local paths only (others fall back to Lightning's own writer)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            if path.name == LAST and path.is_file():
                os.replace(path, path.with_name(PREVIOUS))
            os.replace(tmp, path)
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None when it looks whole."""
    path = Path(path)
    if path.is_dir():  # a sharded (distributed) checkpoint
        return None if (path / ".metadata").is_file() else "sharded checkpoint folder without .metadata"
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
                return "not a torch checkpoint (no data.pkl)"
            if size <= _FULL_CRC_LIMIT:
                bad = zf.testzip()
            else:
                bad = next((n for n in names if n.endswith(".pkl") and _crc_fails(zf, n)), None)
            if bad is not None:
                return f"CRC mismatch in {bad}"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _crc_fails(zf: zipfile.ZipFile, name: str) -> bool:
    try:
        zf.read(name)
    except zipfile.BadZipFile:
        return True
    return False


def _candidates(step_dir: Path) -> list[Path]:
    """Resumable checkpoints, newest first: last, the kept previous one, Lightning's SLURM (hpc) ones."""
    ckpt_dir = step_dir / "checkpoints"
    found = [p for p in (ckpt_dir / LAST, ckpt_dir / PREVIOUS) if p.exists()]
    found += [p for p in step_dir.glob("hpc_ckpt_*.ckpt") if p.exists()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def clean_partial_saves(step_dir: Path) -> None:
    """Remove temporary files of saves cut short by a kill."""
    for tmp in (step_dir / "checkpoints").glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def resume_checkpoint(step_dir: Path) -> Path | None:
    """The checkpoint to resume from (None: start fresh). Damaged checkpoints are set aside."""
    clean_partial_saves(step_dir)
    damaged: list[str] = []
    for path in _candidates(step_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            if damaged:
                log.warning("resuming from the earlier checkpoint %s instead", path)
            return path
        aside = path.with_name(path.name + ".damaged")
        log.warning("checkpoint %s is damaged (%s); moved to %s", path, problem, aside)
        os.replace(path, aside)
        damaged.append(f"{path} ({problem})")
    if damaged:
        raise CheckpointError(
            f"no usable checkpoint to resume from: {'; '.join(damaged)} (kept as *.damaged). Delete "
            f"{step_dir / 'checkpoints'} to train this step from the start, or restore a good copy there"
        )
    return None


class ResumeRNG(Callback):
    """RNG streams in every checkpoint; restored just before the first training batch after a resume."""

    def __init__(self):
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        import numpy as np

        # Plain tensors, ints and lists only: Lightning loads checkpoints with weights_only=True.
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, mt, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "python": [version, list(mt), gauss_next],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending is None:
            return
        import numpy as np

        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        version, mt, gauss_next = state["python"]
        random.setstate((version, tuple(mt), gauss_next))
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _at_step_boundary(trainer, batch_idx: int) -> bool:
    """True after the micro-batch that completes an optimizer step (nothing accumulated is lost)."""
    return (
        batch_idx + 1
    ) % trainer.accumulate_grad_batches == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class StopOnSignal(Callback):
    """After SIGTERM/SIGINT: finish the optimizer step, save ``checkpoints/last.ckpt``, raise Interrupted.

    Lightning's own SIGTERM handling stops after the current *micro*-batch (and exits with status 0);
    mid-accumulation that would lose the accumulated gradients, so its flag is held back until the
    step completes. All ranks agree before stopping (a collective).
    """

    def __init__(self, step_dir: Path, where: str):
        self.last = Path(step_dir) / "checkpoints" / LAST
        self.where = where

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        connector = getattr(trainer, "_signal_connector", None)
        lightning_flag = bool(getattr(connector, "received_sigterm", False))
        signum = interrupt.requested()
        if lightning_flag and signum is None:  # SIGTERM reached Lightning's handler only
            import signal

            signum = signal.SIGTERM
        if not _at_step_boundary(trainer, batch_idx):
            if lightning_flag:
                connector.received_sigterm = False  # stop at the step boundary instead (see above)
                interrupt.record(signum)
            return
        stop = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
        if not stop:
            return
        if signum is None:  # another rank got the signal
            import signal

            signum = signal.SIGTERM
        trainer.save_checkpoint(self.last)
        interrupt.clear()
        if connector is not None:
            connector.received_sigterm = False
        raise interrupt.Interrupted(signum, self.where, f"checkpoint saved at step {trainer.global_step}: {self.last}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning raises SIGTERMException itself outside the batch loop (end of an epoch, during
        # validation): the optimizer state is at a step boundary there, so it is safe to save.
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.last)
