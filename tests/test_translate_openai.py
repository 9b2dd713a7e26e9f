"""The openai plugin through the official openai client against a loopback chat-completions server."""

import json

import pytest

from translate_servers import FakeServer
from vichat.records import VichatError
from vichat.translate.job import translate_texts
from vichat.retry import Backoff
from vichat_plugins.openai_translate import parse_items

from vichat.plugins import get_registry  # noqa: E402

OPENAI = get_registry().translator("openai")

FAST = Backoff(base=0.001, cap=0.005, max_retries=3)


@pytest.fixture
def chat(monkeypatch):
    with FakeServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.openai_url)
        yield server


def run(texts, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("backoff", FAST)
    return translate_texts(texts, OPENAI, "en", "vi", **kw)


def test_numbered_list_round_trip(chat):
    res = run(["Hello world.", "Call 555 now.", "Good night."])
    assert res.translations == ["VI: Hello world.", "VI: Call 555 now.", "VI: Good night."]
    (seen,) = chat.seen
    body = seen.body
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0
    assert "Vietnamese" in body["messages"][0]["content"] and "\u27e60\u27e7" in body["messages"][0]["content"]
    items = json.loads(body["messages"][1]["content"])
    assert items == [{"id": 1, "text": "Hello world."}, {"id": 2, "text": "Call \u27e60\u27e7 now."}, {"id": 3, "text": "Good night."}]


def test_short_answer_is_retried_never_misaligned(chat):
    chat.push(("short",))
    res = run(["One.", "Two.", "Three."])
    assert res.translations == ["VI: One.", "VI: Two.", "VI: Three."]
    assert chat.requests == 2


def test_persistent_count_mismatch_fails_the_batch(chat):
    chat.push(*[("short",)] * 4)
    res = run(["One.", "Two.", "Three."])
    assert res.translations == [None, None, None]
    assert "2 items for 3 texts" in res.errors[0]


def test_fenced_and_chatty_answers_are_parsed(chat):
    chat.push(("fenced",))
    assert run(["One.", "Two."]).translations == ["VI: One.", "VI: Two."]
    chat.push(("openai-malformed",))
    assert run(["Three."]).translations == ["VI: Three."]
    assert chat.requests == 3


def test_429_with_retry_after_and_500(chat):
    chat.push(("status", 429, {"Retry-After": "0.3"}), ("status", 500))
    res = run(["Hello."])
    assert res.translations == ["VI: Hello."]
    assert chat.requests == 3
    assert chat.seen[1].time - chat.seen[0].time >= 0.28


def test_timeout_is_retried(chat):
    chat.push(("sleep", 3.0))
    res = run(["Hello."], options={"timeout": "0.3"})
    assert res.translations == ["VI: Hello."] and chat.requests == 2


def test_bad_key_is_fatal(chat):
    chat.push(("status", 401, {}, {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}))
    with pytest.raises(VichatError, match="OPENAI_API_KEY"):
        run(["Hello."])


def test_model_option_is_sent_and_keys_the_cache(chat, tmp_path):
    db = tmp_path / "c.sqlite"
    run(["Hello."], cache=db)
    run(["Hello."], cache=db)
    assert chat.requests == 1
    run(["Hello."], cache=db, options={"model": "gpt-4o"})
    assert chat.requests == 2 and chat.seen[-1].body["model"] == "gpt-4o"


def test_parse_items_orders_by_id_and_rejects_bad_ids():
    assert parse_items('[{"id": 2, "text": "b"}, {"id": 1, "text": "a"}]', 2) == ["a", "b"]
    assert parse_items('["a", "b"]', 2) == ["a", "b"]
    assert parse_items('{"translations": ["a"]}', 1) == ["a"]
    with pytest.raises(ValueError, match="ids"):
        parse_items('[{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]', 2)
    with pytest.raises(ValueError, match="1 items for 2"):
        parse_items('["a"]', 2)
    with pytest.raises(ValueError):
        parse_items("no json here", 1)
