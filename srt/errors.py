"""User-facing errors. The CLI prints these as one clear line and exits non-zero (no traceback)."""


class SrtError(Exception):
    """Base class for mistakes a user can fix (bad config, bad input file, unknown plugin...)."""


class ConfigError(SrtError):
    """Invalid or inconsistent run configuration."""


class RecordError(SrtError):
    """A JSONL record that cannot be read or validated; the message names file and line."""


class PluginError(SrtError):
    """Unknown plugin name, or a plugin that failed to load."""


class TemplateError(SrtError):
    """A tokenizer/chat template that would train the model wrongly (see srt.tokenizer_check)."""


class CriticError(SrtError):
    """A critic that cannot be used as configured (missing API key variable, bad endpoint...)."""
