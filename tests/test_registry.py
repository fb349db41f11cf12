"""Plugin registry: lazy discovery, clear errors, one broken plugin never breaks the others."""

import textwrap

import pytest

from srt.errors import PluginError
from srt.registry import BENCHMARKS, CRITICS, available, create_critic, list_plugins, load_plugin

BUILTIN_CRITICS = {"openai", "hf", "self", "reference"}
BUILTIN_BENCHMARKS = {"alpaca_eval", "gsm8k", "tydiqa", "mgsm", "judge_agreement", "refine_vs_rerank", "word_problems"}


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A real installed-looking distribution (dist-info on sys.path) with a good and a broken critic."""
    (tmp_path / "fakeplug_good.py").write_text(
        textwrap.dedent("""
        class GoodCritic:
            name = "good"
            def __init__(self, settings):
                self.settings = settings
            @classmethod
            def from_config(cls, settings, policy=None):
                return cls(settings)
            def describe(self):
                return {"name": self.name, **self.settings}
            def critique(self, requests):
                return []
    """)
    )
    (tmp_path / "fakeplug_broken.py").write_text("import a_module_that_does_not_exist\n")
    info = tmp_path / "fakeplug-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(
        "[srt.critics]\ngood = fakeplug_good:GoodCritic\nbroken = fakeplug_broken:BrokenCritic\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtins_are_registered_through_entry_points():
    assert BUILTIN_CRITICS <= set(available(CRITICS))
    assert BUILTIN_BENCHMARKS <= set(available(BENCHMARKS))
    for info in list_plugins(CRITICS, check=False):
        if info.name in BUILTIN_CRITICS:
            assert info.distribution == "srt"
            assert info.value.startswith("srt_builtin.critics.")


def test_unknown_name_lists_what_is_installed():
    with pytest.raises(PluginError) as exc:
        load_plugin(CRITICS, "no-such-critic")
    msg = str(exc.value)
    assert "no-such-critic" in msg
    for name in BUILTIN_CRITICS:
        assert name in msg


def test_broken_plugin_is_reported_and_does_not_break_others(fake_distribution):
    infos = {i.name: i for i in list_plugins(CRITICS)}
    assert infos["broken"].distribution == "fakeplug" and infos["broken"].version == "1.2.3"
    assert not infos["broken"].ok and "a_module_that_does_not_exist" in infos["broken"].error
    assert infos["good"].ok
    critic = create_critic("good", {"model": "m"})
    assert critic.describe() == {"name": "good", "model": "m"}
    with pytest.raises(PluginError) as exc:
        load_plugin(CRITICS, "broken")
    assert "fakeplug 1.2.3" in str(exc.value) and "ModuleNotFoundError" in str(exc.value)


def test_core_never_imports_a_plugin():
    """srt/ must not import srt_builtin or a plugin package (plugins register via entry points)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "srt"
    offenders = [
        str(p.relative_to(root.parent))
        for p in root.rglob("*.py")
        if re.search(r"^\s*(from|import)\s+(srt_builtin|srt_critic_\w+)\b", p.read_text(), re.M)
    ]
    assert offenders == []
