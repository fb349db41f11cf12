"""Plugin registry: critics and benchmarks are discovered through entry points, lazily.

Nothing is imported until a plugin is asked for by name, so one broken plugin never breaks the
others; ``list_plugins`` reports each plugin with its distribution and, where it fails to import,
the error. The core never imports a plugin module directly: built-ins in ``plugins/srt_builtin``
register through ``setup.cfg`` exactly like a third-party package.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from srt.errors import PluginError, SrtError

CRITICS = "srt.critics"
BENCHMARKS = "srt.benchmarks"
GROUPS = {"critic": CRITICS, "benchmark": BENCHMARKS}


@dataclass
class PluginInfo:
    group: str
    name: str
    value: str  # "module:attr"
    distribution: str
    version: str
    error: str | None = None  # set by list_plugins(check=True) when the plugin fails to load

    @property
    def ok(self) -> bool:
        return self.error is None


def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        # Two distributions registering the same name: the first one found wins, like pip's order.
        found.setdefault(ep.name, ep)
    return found


def _info(group: str, ep: EntryPoint) -> PluginInfo:
    dist = ep.dist
    return PluginInfo(
        group=group,
        name=ep.name,
        value=ep.value,
        distribution=dist.metadata["Name"] if dist is not None else "?",
        version=dist.version if dist is not None else "?",
    )


def available(group: str) -> list[str]:
    return sorted(_entry_points(group))


def load_plugin(group: str, name: str):
    """Import and return the plugin object (usually a class) registered as ``name`` in ``group``."""
    eps = _entry_points(group)
    if name not in eps:
        installed = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"unknown {group} plugin {name!r}; installed: {installed}")
    ep = eps[name]
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin is reported, never hidden
        info = _info(group, ep)
        raise PluginError(
            f"{group} plugin {name!r} from {info.distribution} {info.version} ({ep.value}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc


def list_plugins(group: str, check: bool = True) -> list[PluginInfo]:
    """Every plugin in ``group`` with where it comes from; ``check`` imports each to report errors."""
    infos = []
    for _, ep in sorted(_entry_points(group).items()):
        info = _info(group, ep)
        if check:
            try:
                ep.load()
            except Exception as exc:
                info.error = f"{type(exc).__name__}: {exc}"
        infos.append(info)
    return infos


def check_plugin_settings(group: str, name: str, settings: dict | None, where: str) -> None:
    """Plan check, before any model is loaded: the plugin exists, its settings validate against the
    ``settings_model`` it declares (unknown keys, types, required ones), and its own
    ``check_settings(parsed)`` passes (an API key variable that is set, a model that can be found).
    Plugins that declare neither are only checked for existence."""
    from pydantic import ValidationError

    from srt.errors import validation_problems

    cls = load_plugin(group, name)
    model = getattr(cls, "settings_model", None)
    parsed = dict(settings or {})
    if model is not None:
        try:
            parsed = model.model_validate(parsed)
        except ValidationError as exc:
            raise PluginError(
                f"{where}: {group} plugin {name!r}: invalid settings: {validation_problems(exc)}"
            ) from None
    check = getattr(cls, "check_settings", None)
    if callable(check):
        try:
            check(parsed)
        except SrtError as exc:
            raise PluginError(f"{where}: {exc}") from None


def create_critic(name: str, settings: dict | None = None, policy=None):
    """Build a critic plugin by name (see :mod:`srt.critic` for the protocol)."""
    cls = load_plugin(CRITICS, name)
    return cls.from_config(dict(settings or {}), policy=policy)


def create_benchmark(name: str, settings: dict | None = None):
    cls = load_plugin(BENCHMARKS, name)
    return cls.from_config(dict(settings or {}))
