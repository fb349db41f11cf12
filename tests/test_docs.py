"""Docs generated from code stay current: the run-config reference."""

from pathlib import Path

from srt.config import RunConfig, config_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_config_reference_is_current():
    assert (DOCS / "config.md").read_text(encoding="utf-8") == config_reference() + "\n", (
        "docs/config.md is stale: run `make docs`"
    )


def test_every_config_field_is_documented():
    """Each setting is defined once, in the schema, with a description (the reference shows it)."""
    import inspect
    import typing

    from pydantic import BaseModel

    undocumented = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                undocumented.append(prefix + name)
            for t in (field.annotation, *typing.get_args(field.annotation)):
                if inspect.isclass(t) and issubclass(t, BaseModel):
                    walk(t, f"{prefix}{name}.")

    walk(RunConfig, "")
    assert undocumented == []
    text = config_reference()
    assert "| `sft.optim.lr` | float | `1e-05` |" in text and "| `data.stage1.path` | str | required |" in text
