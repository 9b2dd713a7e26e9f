"""The remote backend through the real openai client against a fake OpenAI-compatible SSE server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vichat.data.templates import CHAT, DOCTOR
from vichat.serve.api import ChatBackend, ModelError
from vichat.serve.backends import build_backend
from vichat.serve.config import ModelConfig
from vichat.serve.history import fold_history
from vichat.serve.remote import RemoteBackend

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage


class FakeOpenAI:
    """``/v1/completions`` and ``/v1/chat/completions`` with ``stream: true``, as vLLM answers them.

    ``chunks``: the texts streamed (one SSE event each, ``delay`` seconds apart); ``errors``: a queue
    of ``(status, message)`` answered instead, one per request. Every request is recorded."""

    def __init__(self) -> None:
        self.chunks: list[str] = ["Xin", " chào", " bạn", "!"]
        self.delay = 0.0
        self.finish: str | None = "stop"  # the last chunk's finish_reason; None: the stream is cut off
        self.errors: list[tuple[int, str]] = []
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes, like a stream

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                try:
                    fake.answer(self, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client cancelled

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def answer(self, h: BaseHTTPRequestHandler, body: dict) -> None:
        if self.errors:
            status, message = self.errors.pop(0)
            data = json.dumps({"error": {"message": message, "type": "BadRequestError", "code": status}}).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return
        chat = h.path.endswith("/chat/completions")
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        last = [("", self.finish)] if self.finish else []  # vLLM ends with an empty chunk that says why
        for i, (text, finish) in enumerate([(t, None) for t in self.chunks] + last):
            if i and self.delay:
                time.sleep(self.delay)
            choice = ({"index": 0, "delta": {"content": text}, "finish_reason": finish} if chat
                      else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
            event = {"id": "x", "object": "chat.completion.chunk" if chat else "text_completion", "created": 0,
                     "model": body["model"], "choices": [choice]}
            h.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
            h.wfile.flush()
        if self.finish:
            h.wfile.write(b"data: [DONE]\n\n")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def backend(server: FakeOpenAI, api: str = "completions", **model: Any) -> RemoteBackend:
    m = ModelConfig(name="bloomz-chat-remote", model="bloomz-chat", template="chat", **model)
    return RemoteBackend.create(server.url, [m, ModelConfig(name="gptj-doctor", template="doctor")],
                                api_key_env="VICHAT_TEST_KEY", api=api, max_retries=0, timeout=10)


def test_completions_stream_with_the_template_prompt_and_the_papers_decoding(server, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "secret")
    b = backend(server, decoding={"temperature": 0.7})
    assert isinstance(b, ChatBackend)
    assert [(m.name, m.backend, m.decoding.temperature) for m in b.models()] == [
        ("bloomz-chat-remote", "remote", 0.7), ("gptj-doctor", "remote", 0.5)]
    history = [("Thủ đô của Việt Nam là gì?", "Hà Nội.")]
    deltas = list(b.stream("bloomz-chat-remote", "Còn Huế?", history))
    assert deltas == ["Xin", " chào", " bạn", "!"]
    req = server.requests[-1]
    assert req["path"] == "/v1/completions"
    assert req["headers"]["authorization"] == "Bearer secret"
    body = req["body"]
    assert body["prompt"] == fold_history(CHAT, "Còn Huế?", history)
    assert {k: body[k] for k in ("model", "temperature", "top_p", "max_tokens", "top_k", "repetition_penalty",
                                 "stop", "stream")} == {
        "model": "bloomz-chat", "temperature": 0.7, "top_p": 1.0, "max_tokens": 256, "top_k": 20,
        "repetition_penalty": 1.2, "stop": ["### Instruction:", "### Response:"], "stream": True}
    list(b.stream("gptj-doctor", "Tôi bị sốt"))
    assert server.requests[-1]["body"]["model"] == "gptj-doctor"
    assert server.requests[-1]["body"]["prompt"] == fold_history(DOCTOR, "Tôi bị sốt")


def test_chat_api_sends_turns_as_messages(server, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "secret")
    b = backend(server, api="chat")
    assert "".join(b.stream("gptj-doctor", "Còn đau đầu?", [("Tôi bị sốt", "Hãy uống nước.")])) == "Xin chào bạn!"
    req = server.requests[-1]
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["messages"] == [
        {"role": "system", "content": "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân."},
        {"role": "user", "content": "Tôi bị sốt"}, {"role": "assistant", "content": "Hãy uống nước."},
        {"role": "user", "content": "Còn đau đầu?"}]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_stream_cut_off_before_its_finish_reason_is_an_error_not_an_answer(server, monkeypatch, api):
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    server.finish = None  # the connection closes after the text: no finish_reason, no [DONE]
    shown: list[str] = []
    with pytest.raises(ModelError, match=r"ended before the answer did \(no chunk carried a finish_reason\)"):
        for delta in backend(server, api=api).stream("bloomz-chat-remote", "?"):
            shown.append(delta)
    assert "".join(shown) == "Xin chào bạn!"  # what came was shown, then the missing end raised
    server.finish = "length"  # cut by max_tokens: the server says so, and the answer is whole
    assert "".join(backend(server, api=api).stream("bloomz-chat-remote", "?")) == "Xin chào bạn!"


def test_a_server_that_ignores_stop_still_never_shows_the_marker(server, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    server.chunks = ["Đáp án là", " 42.\n##", "# Instr", "uction:\nCâu bịa", " thêm"]
    deltas = list(backend(server).stream("bloomz-chat-remote", "?"))
    assert "".join(deltas) == "Đáp án là 42." and not any("#" in d for d in deltas)


def test_replacement_and_control_characters_from_the_server_never_show(server, monkeypatch):
    """vLLM streams U+FFFD for bytes that never form a character; the local engine drops them."""
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    server.chunks = ["Xin \ufffd", "chào\x07 bạn", "\r\n!\ufffd"]
    assert "".join(backend(server).stream("bloomz-chat-remote", "?")) == "Xin chào bạn\n!"


def test_errors_become_short_model_errors(server, monkeypatch):
    b = backend(server)
    with pytest.raises(ModelError, match="VICHAT_TEST_KEY"):
        b.stream("bloomz-chat-remote", "hi")  # the key's variable is not set
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    with pytest.raises(ModelError, match=r"unknown model 'x'; available: bloomz-chat-remote, gptj-doctor"):
        b.stream("x", "hi")
    server.errors = [(500, "CUDA out of memory")]
    with pytest.raises(ModelError, match="bloomz-chat-remote: the server at .* failed: .*CUDA out of memory"):
        b.stream("bloomz-chat-remote", "hi")
    down = RemoteBackend.create("http://127.0.0.1:9/v1", ["m"], max_retries=0, timeout=2)
    with pytest.raises(ModelError, match="failed"):
        down.stream("m", "hi")


def test_too_long_for_the_server_drops_the_oldest_turn_and_retries(server, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    server.errors = [(400, "This model's maximum context length is 2048 tokens. However, you requested 3000")]
    history = [("một", "1"), ("hai", "2")]
    assert "".join(backend(server).stream("bloomz-chat-remote", "ba", history)) == "Xin chào bạn!"
    prompts = [r["body"]["prompt"] for r in server.requests]
    assert prompts == [fold_history(CHAT, "ba", history), fold_history(CHAT, "ba", history[1:])]


def test_cancel_ends_a_slow_stream_promptly(server, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    server.chunks, server.delay = ["một"] + [" hai"] * 20, 0.5
    cancel = threading.Event()
    got = []
    for delta in backend(server).stream("bloomz-chat-remote", "?", cancel=cancel):
        got.append(delta)
        threading.Timer(0.05, cancel.set).start()  # cancelled while the next chunk is awaited
    assert got == ["một"]  # the stream ended before the next chunk (0.5 s later) arrived


def test_build_backend_serves_a_remote_server_from_a_yaml_file(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VICHAT_TEST_KEY", "k")
    path = tmp_path / "models.yaml"
    path.write_text(f"""
backends:
  - base_url: {server.url}
    api_key_env: VICHAT_TEST_KEY
    max_retries: 0
    models:
      - name: bloomz-chat
        template: chat
        description: Bloomz-Chat on vLLM (LoRA module bloomz-chat)
""", encoding="utf-8")
    monkeypatch.setenv("VICHAT_MODELS_CONFIG", str(path))
    b = build_backend(registry=REG)
    assert [m.name for m in b.models()] == ["bloomz-chat"]
    assert "".join(b.stream("bloomz-chat", "hi")) == "Xin chào bạn!"
    with pytest.raises(ModelError, match="available: bloomz-chat"):
        b.stream("bloomz-doctor", "hi")
