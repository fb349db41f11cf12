"""User-facing errors. The CLI prints these as one ``Error:`` line and exits with status 2; anything
else (a bug in srt) keeps its traceback.

* :class:`ConfigError`: the run or eval config (found while loading or planning it);
* :class:`RecordError` (alias :data:`DataError`): input data (``file:line`` in the message);
* :class:`PluginError`: a plugin that is missing, fails to load, or breaks its contract;
* :class:`TrainingError`: a training step that cannot go on as configured (e.g. no usable checkpoint);
* :class:`TemplateError`, :class:`CriticError`: a chat template or a critic that cannot be used.
"""


class SrtError(Exception):
    """Base class for mistakes a user can fix (bad config, bad input file, unknown plugin...)."""


class ConfigError(SrtError):
    """Invalid or inconsistent run configuration."""


class RecordError(SrtError):
    """A JSONL record that cannot be read or validated; the message names file and line."""


DataError = RecordError  # the name for input-data errors in general


class PluginError(SrtError):
    """Unknown plugin name, a plugin that failed to load, or one that broke its contract."""


class TrainingError(SrtError):
    """A training step that cannot continue as configured (a damaged checkpoint with no fallback...)."""


class TemplateError(SrtError):
    """A tokenizer/chat template that would train the model wrongly (see srt.tokenizer_check)."""


class CriticError(SrtError):
    """A critic that cannot be used as configured (missing API key variable, bad endpoint...)."""


def validation_problems(exc, prefix: str = "", *, model=None, hint: str | None = None) -> str:
    """The one formatter of pydantic validation errors (configs, plugin settings, records): one line,
    a ``;``-separated part per problem, each naming the key, what is wrong and what was given.

    ``model``: for an unknown top-level key, list the allowed ones (plus ``hint``)."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        elif err["type"] == "extra_forbidden":
            allowed = ""
            if model is not None and len(err["loc"]) == 1:
                allowed = f"; allowed: {', '.join(model.model_fields)}" + (f"; {hint}" if hint else "")
            parts.append(f"{loc}: unknown key (typo?{allowed})")
        elif not loc:  # a whole-object check
            parts.append(msg)
        else:
            given = repr(err.get("input"))
            given = given if len(given) <= 60 else given[:57] + "..."
            parts.append(f"{loc}: {msg} (got {given})")
    return "; ".join(parts)
