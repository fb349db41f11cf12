"""The OpenAI-compatible critic against a real HTTP server on loopback (tests/chat_server.py).

Everything goes through the real ``openai`` client and real sockets: retries, Retry-After waits,
timeouts, dropped connections, the on-disk cache across a simulated restart, and secrets hygiene.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from chat_server import ChatServer, Fault

from srt.critic import CritiqueRequest
from srt.critic_template import ParsedCritique, ParseFailure, parse_critique, render_critic_prompt, render_critique
from srt.errors import CriticError
from srt.registry import create_critic, load_plugin

SECRET = "sk-test-5f3c9a1e7b2d4e6f8a0c-DO-NOT-LEAK"
KEY_ENV = "SRT_TEST_OPENAI_KEY"

_RESPONSE_RE = re.compile(r"### Response\n(?P<response>.*?)\n\n### Requirements", re.S)


def scripted_critic(messages):
    """A well-formed critique whose score is the response's word count (capped at 10)."""
    response = _RESPONSE_RE.search(messages[-1]["content"]).group("response")
    words = len(response.split())
    return render_critique(
        weaknesses=f"- The response has only {words} words.",
        suggestions="- Add an example and explain the reasoning.",
        score=max(1, min(10, words)),
        improved_response=response + " For example, consider a concrete case.",
    )


def requests_for(*responses, instruction="Explain photosynthesis."):
    return [CritiqueRequest(id=f"r{i}", instruction=instruction, response=r) for i, r in enumerate(responses)]


@pytest.fixture()
def server():
    with ChatServer(responder=scripted_critic) as srv:
        yield srv


@pytest.fixture()
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


@pytest.fixture()
def make_critic(server, api_key, tmp_path):
    def make(**overrides):
        settings = {
            "model": "test-critic",
            "base_url": server.base_url,
            "api_key_env": KEY_ENV,
            "cache_dir": str(tmp_path / "cache"),
            "timeout_s": 2.0,
            "max_retries": 3,
            "backoff_base_s": 0.01,  # keep the jittered backoff tiny: the file runs in seconds
            "backoff_max_s": 0.05,
            "progress": False,
        }
        settings.update(overrides)
        return create_critic("openai", settings)

    return make


def test_registered_under_openai_entry_point():
    from srt_builtin.critics.openai_critic import OpenAICritic

    assert load_plugin("srt.critics", "openai") is OpenAICritic


def test_success_path_parses_and_accounts(make_critic, server):
    critic = make_critic(price_per_1k_prompt=0.01, price_per_1k_completion=0.03)
    reqs = requests_for("Plants use light.", "Plants turn light and water into sugar and oxygen.")
    replies = critic.critique(reqs)

    assert [r.error for r in replies] == [None, None]
    parsed = [parse_critique(r.text) for r in replies]
    assert all(isinstance(p, ParsedCritique) for p in parsed)
    assert [p.score for p in parsed] == [3, 9]  # word counts of the two responses
    assert parsed[0].improved_response.startswith("Plants use light. For example")

    # What went over the wire: the rendered template as the user turn, the paper's decoding, the key.
    assert server.request_count == 2
    bodies = sorted((r.body for r in server.requests), key=lambda b: len(b["messages"][0]["content"]))
    assert bodies[0]["messages"] == [
        {"role": "user", "content": render_critic_prompt(reqs[0].instruction, reqs[0].response)}
    ]
    assert bodies[0]["model"] == "test-critic"
    assert bodies[0]["temperature"] == 0 and bodies[0]["max_tokens"] == 2048
    assert {r.authorization for r in server.requests} == {f"Bearer {SECRET}"}

    stats = critic.stats()
    usage = [r.usage for r in replies]
    assert stats["requests"] == stats["completions"] == 2 and stats["retries"] == 0
    assert stats["prompt_tokens"] == sum(u["prompt_tokens"] for u in usage) > 0
    assert stats["completion_tokens"] == sum(u["completion_tokens"] for u in usage) > 0
    expected_cost = stats["prompt_tokens"] / 1000 * 0.01 + stats["completion_tokens"] / 1000 * 0.03
    assert stats["cost_usd"] == pytest.approx(expected_cost)
    assert all(u["cached"] is False and u["cost_usd"] > 0 for u in usage)


def test_system_prompt_is_sent(make_critic, server):
    critic = make_critic(system_prompt="You are a strict reviewer.")
    critic.critique(requests_for("Short."))
    assert server.requests[0].body["messages"][0] == {"role": "system", "content": "You are a strict reviewer."}


def test_retry_after_is_honoured(make_critic, server):
    critic = make_critic()
    server.inject(Fault.http(429, retry_after="0.3"))
    [reply] = critic.critique(requests_for("Plants use light."))

    assert isinstance(parse_critique(reply.text), ParsedCritique)
    assert server.request_count == 2
    waited = server.requests[1].time - server.requests[0].time
    assert waited >= 0.3  # the jittered backoff alone is at most 0.05 s here
    assert critic.stats()["retries"] == 1 and reply.usage["attempts"] == 2


@pytest.mark.parametrize(
    "fault",
    [Fault.http(500), Fault.http(503), Fault.timeout(2.0), Fault.drop(), Fault.malformed_json()],
    ids=["500", "503", "timeout", "connection-drop", "malformed-json"],
)
def test_transient_faults_are_retried(make_critic, server, fault):
    critic = make_critic(timeout_s=0.8)  # generous: the machine may be busy
    server.inject(fault)
    [reply] = critic.critique(requests_for("Plants use light."))

    assert reply.error is None
    assert parse_critique(reply.text).score == 3
    assert server.request_count == 2
    assert critic.stats()["retries"] == 1 and critic.stats()["failures"] == 0


def test_gives_up_after_max_retries_and_recovers_later(make_critic, server):
    critic = make_critic(max_retries=2)
    server.inject(Fault.http(500), Fault.http(502), Fault.http(503))
    [reply] = critic.critique(requests_for("Plants use light."))

    assert reply.text is None
    assert "HTTP 503" in reply.error and "3 attempt" in reply.error
    assert server.request_count == 3
    stats = critic.stats()
    assert stats["retries"] == 2 and stats["failures"] == 1 and stats["completions"] == 0

    # The failure was not cached: asking again reaches the (now healthy) server.
    [again] = critic.critique(requests_for("Plants use light."))
    assert again.error is None and server.request_count == 4


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_fail_fast(make_critic, server, status):
    critic = make_critic(max_retries=5)
    server.inject(Fault.http(status))
    [reply] = critic.critique(requests_for("Plants use light."))

    assert reply.text is None and f"HTTP {status}" in reply.error
    assert server.request_count == 1
    assert critic.stats()["retries"] == 0 and critic.stats()["failures"] == 1


def test_garbage_and_empty_completions_are_returned_as_text(make_critic, server):
    critic = make_critic()
    server.inject(Fault.garbage("I like turtles."), Fault.empty())
    replies = critic.critique(requests_for("Plants use light."))
    replies += critic.critique(requests_for("Plants make sugar."))

    assert [r.text for r in replies] == ["I like turtles.", ""]
    assert all(r.error is None for r in replies)
    assert isinstance(parse_critique(replies[0].text), ParseFailure)
    assert parse_critique(replies[1].text).reason == "empty"
    assert critic.stats()["empty_completions"] == 1 and critic.stats()["retries"] == 0

    # The empty reply is not cached (a rerun asks again); the garbage one is a real completion.
    critic.critique(requests_for("Plants use light.", "Plants make sugar."))
    assert server.request_count == 3


def test_cache_survives_a_restart(make_critic, server, tmp_path):
    reqs = requests_for("One.", "One two.", "One two three.")
    first = make_critic().critique(reqs)
    assert server.request_count == 3

    restarted = make_critic()  # a new instance, as after a crash: same settings, same cache_dir
    second = restarted.critique(reqs)
    assert server.request_count == 3  # zero HTTP requests
    assert [r.text for r in second] == [r.text for r in first]
    assert all(r.usage["cached"] is True and r.usage["cost_usd"] == 0 for r in second)
    stats = restarted.stats()
    assert stats["cache_hits"] == 3 and stats["requests"] == 0 and stats["cost_usd"] == 0
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no leftovers of the atomic writes


@pytest.mark.parametrize(
    "change", [{"model": "other-critic"}, {"temperature": 0.7}, {"max_tokens": 512}, {"system_prompt": "Be terse."}]
)
def test_changed_settings_miss_the_cache(make_critic, server, change):
    reqs = requests_for("One.", "One two.")
    make_critic().critique(reqs)
    assert server.request_count == 2
    replies = make_critic(**change).critique(reqs)
    assert server.request_count == 4
    assert all(r.usage["cached"] is False for r in replies)


def test_servers_named_by_openai_base_url_do_not_share_the_cache(make_critic, monkeypatch):
    # base_url null: the client sends to OPENAI_BASE_URL; the cache key must name that server, or
    # answers cached from one server (a local model) would be served as another's (the API).
    reqs = requests_for("One.", "One two.")
    with ChatServer(responder=scripted_critic) as first, ChatServer(responder=scripted_critic) as second:
        monkeypatch.setenv("OPENAI_BASE_URL", first.base_url)
        assert [r.usage["cached"] for r in make_critic(base_url=None).critique(reqs)] == [False, False]
        monkeypatch.setenv("OPENAI_BASE_URL", second.base_url)
        critic = make_critic(base_url=None)
        assert [r.usage["cached"] for r in critic.critique(reqs)] == [False, False]
        assert (first.request_count, second.request_count) == (2, 2)
        assert critic.describe()["base_url"] == second.base_url.rstrip("/")
        monkeypatch.setenv("OPENAI_BASE_URL", first.base_url)  # back to the first: its answers are cached
        assert [r.usage["cached"] for r in make_critic(base_url=None).critique(reqs)] == [True, True]
        assert first.request_count == 2


def test_identical_prompts_are_sent_once(make_critic, server):
    reqs = requests_for("Same answer.", "Same answer.")
    reqs.append(CritiqueRequest(id="s", instruction=reqs[0].instruction, response="Same answer.", mode="score"))
    replies = make_critic().critique(reqs)
    assert server.request_count == 1
    assert len({r.text for r in replies}) == 1 and replies[0] is not replies[1]


def test_cache_can_be_disabled(make_critic, server, tmp_path):
    reqs = requests_for("One.")
    make_critic(cache=False).critique(reqs)
    make_critic(cache=False).critique(reqs)
    assert server.request_count == 2
    assert not (tmp_path / "cache").exists()


def test_api_key_never_leaks(make_critic, server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # includes the openai client's and httpx's debug logs
    critic = make_critic(max_retries=1)
    server.inject(Fault.http(500), Fault.http(401), Fault.http(503))
    replies = critic.critique(requests_for("One.", "One two."))
    replies += critic.critique(requests_for("One two three."))

    assert {r.authorization for r in server.requests} == {f"Bearer {SECRET}"}  # the key was used...
    assert any(r.name.startswith("openai") for r in caplog.records)  # ...and the client did log
    assert any("retry" in r.getMessage() for r in caplog.records)
    assert SECRET not in caplog.text
    assert SECRET not in json.dumps(critic.describe())
    assert SECRET not in json.dumps(critic.stats())
    assert all(SECRET not in json.dumps([r.text, r.error, r.usage]) for r in replies)
    cache_files = list((tmp_path / "cache").rglob("*"))
    assert any(p.is_file() for p in cache_files)
    assert all(SECRET not in p.read_text() for p in cache_files if p.is_file())


def test_describe_has_provenance_and_no_secrets(make_critic):
    from srt.critic_template import TEMPLATE_HASH

    critic = make_critic(base_url="http://127.0.0.1:9/v1")
    info = critic.describe()
    assert info["name"] == "openai" and info["model"] == "test-critic"
    assert info["base_url"] == "http://127.0.0.1:9/v1"
    assert info["api_key_env"] == KEY_ENV and info["template_hash"] == TEMPLATE_HASH
    assert SECRET not in json.dumps(info)


def test_credentials_in_the_url_are_refused(make_critic):
    # A key written into the URL would land in manifests and logs: refused before anything is sent.
    with pytest.raises(CriticError, match="credential") as exc:
        make_critic(base_url="http://alice:hunter2@127.0.0.1:9/v1")
    assert "hunter2" not in str(exc.value)


def test_missing_key_variable_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SRT_NO_SUCH_KEY", raising=False)
    with pytest.raises(CriticError, match="SRT_NO_SUCH_KEY"):
        create_critic("openai", {"model": "m", "api_key_env": "SRT_NO_SUCH_KEY", "cache_dir": str(tmp_path)})
    monkeypatch.setenv("SRT_NO_SUCH_KEY", "  ")
    with pytest.raises(CriticError, match="SRT_NO_SUCH_KEY"):
        create_critic("openai", {"model": "m", "api_key_env": "SRT_NO_SUCH_KEY", "cache_dir": str(tmp_path)})


@pytest.mark.parametrize(
    "settings, needle",
    [({}, "model"), ({"model": "m", "modle": "x"}, "modle"), ({"model": "m", "max_concurrency": 0}, "max_concurrency")],
)
def test_bad_settings_are_a_clear_error(api_key, settings, needle):
    with pytest.raises(CriticError, match=needle) as info:
        create_critic("openai", {"api_key_env": KEY_ENV, **settings})
    assert "\n" not in str(info.value)


def test_concurrency_limit_is_respected(make_critic, server):
    server.handle_delay_s = 0.1  # long enough for requests to overlap
    critic = make_critic(max_concurrency=3)
    replies = critic.critique(requests_for(*[" ".join(["w"] * n) for n in range(1, 10)]))

    assert server.request_count == 9
    assert 2 <= server.max_in_flight <= 3
    assert [parse_critique(r.text).score for r in replies] == list(range(1, 10))  # order kept


def test_parse_retry_after():
    from srt_builtin.critics.openai_critic import parse_retry_after

    assert parse_retry_after({"retry-after": "2"}, cap_s=60) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}, cap_s=60) == 0.25
    assert parse_retry_after({"retry-after-ms": "150", "retry-after": "9"}, cap_s=60) == 0.15
    assert parse_retry_after({"retry-after": "3600"}, cap_s=30) == 30  # capped
    assert parse_retry_after({"retry-after": "-5"}, cap_s=30) == 0
    in_5s = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=5), usegmt=True)
    assert 3.0 <= parse_retry_after({"retry-after": in_5s}, cap_s=60) <= 5.0
    assert parse_retry_after({"retry-after": "soon"}, cap_s=60) is None
    assert parse_retry_after({}, cap_s=60) is None


def test_tiny_llama_server(api_key, tmp_path, tiny_model, tiny_tokenizer):
    """The server can serve the tiny Llama: its (untrained) text comes back and fails to parse."""
    with ChatServer(model=tiny_model, tokenizer=tiny_tokenizer, max_new_tokens=12) as srv:
        settings = {
            "model": "tiny",
            "base_url": srv.base_url,
            "api_key_env": KEY_ENV,
            "cache_dir": str(tmp_path / "cache"),
            "progress": False,
        }
        replies = create_critic("openai", settings).critique(requests_for("Plants use light.", "Sugar."))
        again = create_critic("openai", {**settings, "cache": False}).critique(requests_for("Plants use light."))

    assert srv.request_count == 3
    assert all(r.error is None and isinstance(r.text, str) for r in replies)
    assert all(0 < r.usage["completion_tokens"] <= 12 and r.usage["prompt_tokens"] > 100 for r in replies)
    assert again[0].text == replies[0].text  # greedy decoding is deterministic
    assert isinstance(parse_critique(replies[0].text), ParseFailure)
