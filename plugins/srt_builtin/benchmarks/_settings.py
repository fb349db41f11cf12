"""Settings models of the built-in benchmarks: one pydantic model per benchmark (``settings_model``).

``srt-eval run`` validates a benchmark's settings against its model before any model is loaded
(:func:`srt.registry.check_plugin_settings`), then calls the plugin's ``check_settings`` (data
files readable, a judge named); the benchmark's constructor parses the same model, so there is one
definition of every setting, with its description.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from srt.errors import ConfigError, validation_problems


class BenchmarkSettings(BaseModel):
    """Unknown keys are errors; values are not coerced (``limit: "3"`` or ``hub: 1`` is refused)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def parse_settings(benchmark: str, model: type[BaseModel], settings: dict[str, Any] | None) -> dict[str, Any]:
    """``settings`` validated by ``model``, as a plain dict holding every setting (defaults filled in)."""
    if isinstance(settings, BaseModel):
        settings = settings.model_dump()
    try:
        return model.model_validate(dict(settings or {})).model_dump()
    except ValidationError as exc:
        raise ConfigError(f"benchmark {benchmark!r}: invalid settings: {validation_problems(exc)}") from None
