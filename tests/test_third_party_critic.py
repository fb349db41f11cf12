"""The example third-party critic package (plugins/srt-critic-length), used by name like any plugin.

``make install`` installs it (``pip install --no-deps -e plugins/srt-critic-length``). Where it is
not installed, the fixture registers it the way an install would: a ``.dist-info`` folder with an
``entry_points.txt`` on ``sys.path``; either way the core finds it only through the entry point.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from srt.critic import Critic, CritiqueRequest
from srt.critic_template import ParsedCritique, ParseFailure, parse_critique
from srt.errors import CriticError
from srt.registry import CRITICS, available, create_critic, list_plugins, load_plugin

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "plugins" / "srt-critic-length"


@pytest.fixture(scope="module", autouse=True)
def length_plugin_registered(tmp_path_factory):
    if "length" in available(CRITICS):
        yield
        return
    site = tmp_path_factory.mktemp("site")
    dist_info = site / "srt_critic_length-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: srt-critic-length\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[srt.critics]\nlength = srt_critic_length:LengthCritic\n")
    sys.path[:0] = [str(PACKAGE_DIR), str(site)]
    try:
        yield
    finally:
        sys.path.remove(str(PACKAGE_DIR))
        sys.path.remove(str(site))


def critique(critic, *responses, mode="critique"):
    reqs = [
        CritiqueRequest(id=str(i), instruction="Explain rain.", response=r, mode=mode) for i, r in enumerate(responses)
    ]
    return [reply.text for reply in critic.critique(reqs)]


def words(n: int, sentence_len: int = 10) -> str:
    """n words in complete sentences of ``sentence_len`` words each."""
    out = []
    for i in range(n):
        w = f"w{i}"
        out.append(w + "." if (i + 1) % sentence_len == 0 or i == n - 1 else w)
    return " ".join(out)


def test_loaded_by_name_through_the_registry():
    cls = load_plugin(CRITICS, "length")
    assert cls.__name__ == "LengthCritic" and cls.__module__ == "srt_critic_length"
    [info] = [p for p in list_plugins(CRITICS) if p.name == "length"]
    assert info.ok and info.distribution == "srt-critic-length" and info.value == "srt_critic_length:LengthCritic"
    assert isinstance(create_critic("length", {}), Critic)


def test_scores_follow_length_and_structure():
    critic = create_critic("length", {"target_words": 20})  # too short < 10 words, too long > 40
    texts = critique(critic, "Water falls.", words(20), words(60), words(20)[:-1], "")
    parsed = [parse_critique(t) for t in texts]

    assert all(isinstance(p, ParsedCritique) for p in parsed[:4])
    short, on_target, too_long, cut_off = parsed[:4]
    assert short.score == 4 and "too short: 2 words" in short.weaknesses  # 10 - (1 + round(6 * 0.8))
    assert on_target.score == 10 and "No length or structure problems" in on_target.weaknesses
    assert too_long.score == 7 and "too long: 60 words" in too_long.weaknesses  # 10 - (1 + round(3 * 0.5))
    assert cut_off.score == 8 and "middle of a sentence" in cut_off.weaknesses
    # An empty response scores 1 and has no improved response, so srt's parse check drops it.
    assert parse_critique(texts[4], require_improved_response=False).score == 1
    assert isinstance(parsed[4], ParseFailure) and parsed[4].reason == "missing_improved_response"


def test_refinements_fix_what_they_can_and_score_higher():
    critic = create_critic("length", {"target_words": 20})
    too_long, cut_off, short = words(60), words(25) + " and then", "Water falls."
    improved = [parse_critique(t).improved_response for t in critique(critic, too_long, cut_off, short)]

    assert len(improved[0].split()) <= 40 and improved[0].endswith(".") and too_long.startswith(improved[0])
    assert improved[1] == words(25)  # the trailing half sentence is dropped
    assert improved[2] == short  # it cannot invent content: unchanged

    # Re-scored in the separate "score" call, as the pipeline does.
    before = [parse_critique(t).score for t in critique(critic, too_long, cut_off, short)]
    after_texts = critique(critic, *improved, mode="score")
    after = [parse_critique(t, require_improved_response=False).score for t in after_texts]
    assert after[0] > before[0] and after[1] > before[1]
    assert after[2] == before[2]  # not strictly higher: filtered out as a preference pair
    assert all("### Improved Response" not in t for t in after_texts)


def test_wall_of_text_is_split_into_paragraphs():
    critic = create_critic("length", {"target_words": 100, "block_words": 150})
    block = words(160)
    [text] = critique(critic, block)
    parsed = parse_critique(text)
    assert parsed.score == 9 and "unbroken block" in parsed.weaknesses
    assert parsed.improved_response.count("\n\n") == 5  # 16 sentences -> 6 paragraphs of <= 3
    assert parsed.improved_response.split() == block.split()  # same words, only re-laid out
    [rescored] = critique(critic, parsed.improved_response, mode="score")
    assert parse_critique(rescored, require_improved_response=False).score == 10


def test_describe_and_bad_settings():
    critic = create_critic("length", {"target_words": 50})
    info = critic.describe()
    assert info["name"] == "length" and info["target_words"] == 50 and "template_hash" in info
    with pytest.raises(CriticError, match="target_wrds"):
        create_critic("length", {"target_wrds": 50})
    with pytest.raises(CriticError, match="max_ratio"):
        create_critic("length", {"max_ratio": 0.5})
