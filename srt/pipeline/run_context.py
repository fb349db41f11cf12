"""What the steps of one run share: the config, the planned steps, and the record of what ran."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from srt.config import RunConfig


@dataclass
class RunContext:
    cfg: RunConfig
    steps: dict[str, Any] = field(default_factory=dict)  # name -> srt.pipeline.steps.Step
    record: Any = None  # srt.pipeline.steps.StepRecord on rank 0; None on other ranks
    config_path: str | None = None

    def _step(self, name: str):
        return self.steps.get(name) if self.record is not None else None

    def started(self, name: str) -> None:
        step = self._step(name)
        if step is not None:
            self.record.started(step)

    def finished(self, name: str) -> None:
        step = self._step(name)
        if step is not None:
            self.record.finished(step)

    def status(self, name: str) -> str | None:
        return self.record.status(name) if self.record is not None else None

    def started_at(self, name: str) -> float | None:
        """When the step first started (epoch seconds), for cost accounting across attempts."""
        entry = self.record.steps.get(name) if self.record is not None else None
        return entry.get("started_ts") if entry else time.time()

    def fingerprints(self, prefix: str) -> dict[str, str]:
        return {name: step.fingerprint for name, step in self.steps.items() if name.startswith(prefix)}
