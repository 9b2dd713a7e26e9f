"""The app on the real local engine (a tiny random BLOOM with two LoRA adapters, built in seconds):
a chat streams, a battle streams both sides and its vote is stored."""

from __future__ import annotations

import pytest
from app_support import BATTLE_ID, running_app, test_settings, text_of, votes_in
from gradio_client import Client

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine_app(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    serve_helpers = pytest.importorskip("serve_helpers")
    from vichat.serve import ServeConfig, build_backend

    backend = build_backend(ServeConfig((serve_helpers.local_config(serve_helpers.tiny_bloom(), seed=0),)), registry=REG)
    settings = test_settings(tmp_path_factory.mktemp("engine"))
    with running_app(backend, settings) as (demo, url):
        assert demo.vichat_preparer.wait(120), "the tiny engine did not load"
        yield url, settings
    backend.close()


def test_chat_streams_from_the_engine(engine_app):
    url, _ = engine_app
    job = Client(url, verbose=False).submit("Xin chào", [], "a", "chat", 24, 0.0, 20, 1.0, 1.2, api_name="/chat")
    outputs = list(job)
    answers = [text_of(o[0])[-1] for o in outputs if len(text_of(o[0])) == 2]
    assert len(set(answers)) >= 3 and answers[-1]


def test_battle_and_vote_on_the_engine(engine_app):
    url, settings = engine_app
    client = Client(url, verbose=False)
    last = list(client.submit("Hà Nội ở đâu?", api_name="/battle_send"))[-1]
    assert "Câu trả lời nào tốt hơn" in last[2], last[2]
    reveal = client.predict(api_name="/battle_vote_tie")[2]
    [row] = [r for r in votes_in(settings.votes_db) if r["battle_id"] == BATTLE_ID.search(reveal).group(1)]
    assert {row["model_a"], row["model_b"]} <= {"a", "b", "bare"} and row["vote"] == "tie"
    # Gradio's Chatbot may render whitespace (tabs) differently from the text stored.
    assert row["answer_a"].split() == text_of(last[0])[-1].split()
