"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests of the API critic.

It speaks ``POST /v1/chat/completions`` (and ``POST /v1/completions`` for raw prompts, greedy
with ``stop`` strings and vLLM's ``stop_reason``, used by srt.remote_generation) over real HTTP (stdlib ``ThreadingHTTPServer`` in a
thread, random port), so the critic is tested with the real ``openai`` client, real sockets and
real timeouts. Replies come from either

* the tiny Llama of :mod:`srt.tiny` (greedy ``generate`` on the chat-templated messages), or
* a ``responder(messages) -> str`` callable, for deterministic, parseable critic text.

Faults are queued for the next requests (one fault per request, first in first out)::

    server.inject(Fault.http(429, retry_after="0.2"), Fault.http(503), Fault.drop())

A chat request that asks for ``logprobs`` gets ``top_logprobs`` for its first token when the server has a
``server.top_logprobs(messages) -> [(token, logprob), ...]`` callable (for judges that read logprobs).

It records every request (arrival time, body, Authorization header) and the peak number of
requests in flight, so tests can assert retries, waits, caching and the concurrency limit.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[[list[dict[str, Any]]], str]


@dataclass
class Fault:
    kind: str  # "http" | "timeout" | "drop" | "garbage" | "malformed_json" | "empty" | "echo_key" | "echo_key_text"
    status: int = 500
    retry_after: str | None = None
    sleep_s: float = 0.0
    text: str = ""

    @classmethod
    def http(cls, status: int, retry_after: str | None = None) -> Fault:
        return cls("http", status=status, retry_after=retry_after)

    @classmethod
    def timeout(cls, sleep_s: float) -> Fault:
        """Hold the request for ``sleep_s`` before answering (longer than the client's timeout)."""
        return cls("timeout", sleep_s=sleep_s)

    @classmethod
    def drop(cls) -> Fault:
        """Close the socket without sending any response."""
        return cls("drop")

    @classmethod
    def garbage(cls, text: str = "lorem ipsum, not a critique at all") -> Fault:
        """A well-formed 200 completion whose text is not in the critic format."""
        return cls("garbage", text=text)

    @classmethod
    def malformed_json(cls) -> Fault:
        """A 200 response with Content-Type application/json whose body is not JSON."""
        return cls("malformed_json")

    @classmethod
    def echo_key(cls, status: int = 401) -> Fault:
        """An error whose message repeats the request's Authorization header (servers do that)."""
        return cls("echo_key", status=status)

    @classmethod
    def echo_key_text(cls) -> Fault:
        """A 200 completion whose text repeats the request's Authorization header."""
        return cls("echo_key_text")

    @classmethod
    def empty(cls) -> Fault:
        """A well-formed 200 completion with empty content."""
        return cls("empty")


@dataclass
class ReceivedRequest:
    time: float  # time.monotonic() at arrival
    body: dict[str, Any] | None
    authorization: str | None


class TinyLlamaResponder:
    """Greedy generation with a causal LM for the chat-templated messages."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 24):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate at a time: the model is shared by all handler threads

    def __call__(self, messages: list[dict[str, Any]], max_tokens: int) -> tuple[str, int, int, str]:
        import torch

        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        new_tokens = min(max_tokens, self.max_new_tokens)
        # Keep the end of a long prompt (the generation prompt) within the model's positions.
        ids = ids[:, -(self.model.config.max_position_embeddings - new_tokens) :]
        with self._lock, torch.no_grad():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
            )
        generated = out[0, ids.shape[1] :]
        stopped = bool((generated == self.tokenizer.eos_token_id).any())
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        return text, ids.shape[1], len(generated), "stop" if stopped else "length"

    def complete_prompt(self, prompt: str, max_tokens: int, stop: list[str]) -> tuple[str, int, int, str, str | None]:
        """Greedy text completion of a raw prompt, as vLLM's ``/v1/completions`` does it (special
        tokens added by the tokenizer, stop strings cut from the text)."""
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        with self._lock, torch.no_grad():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False
            )
        generated = out[0, ids.shape[1] :].tolist()
        eos_at = next((k for k, t in enumerate(generated) if t == self.tokenizer.eos_token_id), None)
        text = self.tokenizer.decode(generated[:eos_at], skip_special_tokens=True)
        hits = [(text.find(s), s) for s in stop if s in text]
        if hits:
            at, matched = min(hits)
            return text[:at], ids.shape[1], len(generated), "stop", matched
        return text, ids.shape[1], len(generated), "stop" if eos_at is not None else "length", None


class ChatServer:
    def __init__(self, responder: Responder | None = None, model=None, tokenizer=None, max_new_tokens: int = 24):
        if (responder is None) == (model is None):
            raise ValueError("give either responder= or model= (with tokenizer=)")
        self.responder = responder
        self.generator = TinyLlamaResponder(model, tokenizer, max_new_tokens) if model is not None else None
        self.requests: list[ReceivedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.handle_delay_s = 0.0  # extra time per normal request (to make overlap observable)
        # Optional ``top_logprobs(messages) -> [(token, logprob), ...]`` (most likely first): a chat request
        # with ``logprobs: true`` gets them as the first generated token's ``top_logprobs``, as OpenAI sends them.
        self.top_logprobs: Callable[[list[dict[str, Any]]], list[tuple[str, float]]] | None = None
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ChatServer:
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.chat = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    # -- control and inspection ------------------------------------------------------------------

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _enter(self, received: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def complete(self, body: dict[str, Any]) -> tuple[str, int, int, str]:
        """(text, prompt_tokens, completion_tokens, finish_reason) for a normal request."""
        messages = body["messages"]
        max_tokens = int(body.get("max_tokens") or 2048)
        if self.generator is not None:
            return self.generator(messages, max_tokens)
        text = self.responder(messages)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return text, prompt_tokens, len(text.split()), "stop"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    chat: ChatServer

    def handle_error(self, request, client_address) -> None:
        # Clients that time out or whose socket we drop on purpose: not an error worth printing.
        pass


def _completion_json(model: str, text: str, prompt_tokens: int, completion_tokens: int, finish: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _logprobs_json(top: list[tuple[str, float]]) -> dict:
    """OpenAI's ``choices[].logprobs`` for one generated token (the first of ``top``)."""
    entries = [{"token": t, "bytes": list(t.encode()), "logprob": lp} for t, lp in top]
    return {"content": [{**entries[0], "top_logprobs": entries}], "refusal": None}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout) before we answered

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = {"error": {"message": message, "type": "test_server_error", "code": status}}
        self._send(status, json.dumps(body).encode(), headers)

    def do_POST(self) -> None:
        chat = self.server.chat
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        chat._enter(ReceivedRequest(time.monotonic(), body, self.headers.get("Authorization")))
        try:
            self._handle(chat, body)
        finally:
            chat._leave()

    def _handle(self, chat: ChatServer, body: dict[str, Any] | None) -> None:
        route = self.path.rstrip("/")
        if route not in ("/v1/chat/completions", "/v1/completions"):
            return self._error(404, f"no route {self.path}")
        field, kind = ("messages", list) if route == "/v1/chat/completions" else ("prompt", str)
        if not isinstance(body, dict) or not isinstance(body.get(field), kind) or "model" not in body:
            return self._error(400, f"request body must be JSON with 'model' and '{field}'")
        if route == "/v1/completions" and chat.generator is None:
            return self._error(400, "/v1/completions needs a server started with model=")
        model = str(body["model"])
        fault = chat._next_fault()
        if fault is not None and fault.kind == "http":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
            return self._error(fault.status, f"injected HTTP {fault.status}", headers)
        if fault is not None and fault.kind == "echo_key":
            return self._error(fault.status, f"invalid API key: {self.headers.get('Authorization')}")
        if fault is not None and fault.kind == "echo_key_text":
            text = f"Your key is {self.headers.get('Authorization')}"
            return self._send(200, json.dumps(_completion_json(model, text, 1, 1, "stop")).encode())
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault is not None and fault.kind == "malformed_json":
            return self._send(200, b'{"id": "chatcmpl-broken", "choices": [ {"index": 0, "mess')
        if fault is not None and fault.kind == "garbage":
            return self._send(200, json.dumps(_completion_json(model, fault.text, 1, 1, "stop")).encode())
        if fault is not None and fault.kind == "empty":
            return self._send(200, json.dumps(_completion_json(model, "", 1, 0, "stop")).encode())
        if fault is not None and fault.kind == "timeout":
            time.sleep(fault.sleep_s)  # the client has hung up by now; the answer below goes nowhere
        if chat.handle_delay_s:
            time.sleep(chat.handle_delay_s)
        if route == "/v1/completions":
            stop = body.get("stop") or []
            text, prompt_tokens, completion_tokens, finish, stop_reason = chat.generator.complete_prompt(
                body["prompt"], int(body.get("max_tokens") or 16), [stop] if isinstance(stop, str) else stop
            )
            payload = _completion_json(model, text, prompt_tokens, completion_tokens, finish)
            payload.update(
                object="text_completion",
                choices=[
                    {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason, "logprobs": None}
                ],
            )
            return self._send(200, json.dumps(payload).encode())
        text, prompt_tokens, completion_tokens, finish = chat.complete(body)
        payload = _completion_json(model, text, prompt_tokens, completion_tokens, finish)
        if chat.top_logprobs is not None and body.get("logprobs"):
            payload["choices"][0]["logprobs"] = _logprobs_json(chat.top_logprobs(body["messages"]))
        return self._send(200, json.dumps(payload).encode())
