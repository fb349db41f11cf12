"""One run per output directory: an exclusive lock held for the life of the run.

Two processes appending to the same ``responses.jsonl`` or paying for the same critic calls would
corrupt the run and waste money, so the second one stops before it does anything. The lock is an
``flock`` on ``<output_dir>/.srt.lock``: the kernel releases it when the holder dies, however it
dies. The file also records who holds it (pid, host, start time, command); a file left behind by a
process that died is reported as stale and taken over with a warning. On filesystems without
``flock`` (some network filesystems) the pid in the file is checked instead.

Only global rank 0 locks: under torchrun/SLURM every rank runs the same command in the same
directory on purpose (:mod:`srt.pipeline.ranks`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from srt.errors import ConfigError

log = logging.getLogger(__name__)
LOCK_FILE = ".srt.lock"


class RunLockedError(ConfigError):
    """Another live process holds the output directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {when}: {holder.get('command', '?')}"


class RunLock:
    """``with RunLock(output_dir, "srt-train"):`` - raises RunLockedError if another run holds it.

    ``RunLock.for_file(path, what)`` locks one output file instead (``<dir>/.<name>.srt.lock``), for a
    command that appends to a file the user names (``srt-eval generate --output``), so two runs on
    different files of one folder do not stop each other."""

    def __init__(
        self,
        output_dir: str | os.PathLike,
        what: str = "srt",
        lock_file: str = LOCK_FILE,
        *,
        setting: str = "output_dir",
        target: str | os.PathLike | None = None,
    ):
        self.dir = Path(output_dir)
        self.path = self.dir / lock_file
        self.what = what
        # What the messages name: the setting the user gives a run's outputs with, and its value.
        self.setting = setting
        self.target = Path(target) if target is not None else self.dir
        self._fd: int | None = None

    @classmethod
    def for_file(cls, path: str | os.PathLike, what: str = "srt") -> RunLock:
        path = Path(path)
        return cls(path.parent, what, lock_file=f".{path.name}{LOCK_FILE}", setting="output", target=path)

    @property
    def label(self) -> str:
        return f"{self.setting} {self.target}"

    def _read_holder(self) -> dict:
        try:
            text = self.path.read_text(encoding="utf-8")
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flock_ok = True
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.label} is in use by another run ({_describe(self._read_holder())}); wait for it "
                f"to finish, stop it, or give this run another {self.setting}"
            ) from None
        except OSError as err:  # no flock on this filesystem: fall back to the pid in the file
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            flock_ok = False
        holder = self._read_holder()
        if holder:
            same_host = holder.get("host") == socket.gethostname()
            pid = holder.get("pid")
            if not flock_ok and same_host and isinstance(pid, int) and pid != os.getpid() and _alive(pid):
                os.close(fd)
                raise RunLockedError(f"{self.label} is in use by another run ({_describe(holder)})")
            log.warning(
                "%s: taking over a stale lock left by a run that is no longer running (%s)", self.dir, _describe(holder)
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
            "what": self.what,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty file is not a stale lock
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
