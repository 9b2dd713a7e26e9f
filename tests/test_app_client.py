"""The app over HTTP with gradio_client: the real Gradio server on 127.0.0.1, a canned backend."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import httpx

import pytest
from app_support import BATTLE_ID, running_app, test_settings, text_of, votes_in
from gradio_client import Client
from gradio_client.exceptions import AppError

from vichat.app.fake import CannedBackend
from vichat.hookspecs import hookimpl
from vichat.plugins import build_registry
from vichat.specs import JudgeResult, JudgeSpec
from test_app_units import write_report

PAPER = (256, 0.5, 20, 1.0, 1.2)
ADMIN = "admin-token-for-tests-0123456789"


class JudgesPlugin:
    """An in-process judge plugin: a good one, one that fails, one that needs a missing key."""

    @hookimpl
    def register_judges(self, register):
        def judge(question, answer1, answer2, prompt, *, model, aspects, **_):  # vichat passes every keyword
            aspect = {"helpfulness": (8.0, 6.0), "accuracy": (7.0, 7.0)} if aspects else {}
            return JudgeResult(8.0, 6.0, f"8 6\nTrợ lý 1 trả lời đúng trọng tâm hơn ({model or 'default'}).", aspect)

        def broken(question, answer1, answer2, prompt, **_):
            raise RuntimeError("upstream 500 with key sk-test-abcdef123456")

        def echo_auth(question, answer1, answer2, prompt, **_):
            # A judge endpoint that echoes the request it got, headers included.
            key = os.environ["OPENAI_API_KEY"]
            return JudgeResult(7.0, 7.0, f"7 7\nrequest: Authorization: Bearer {key}", {})

        register(JudgeSpec("echo-judge", "Test judge.", judge, default_model="echo-1"))
        register(JudgeSpec("echo-auth", "Echoes its request.", echo_auth))
        register(JudgeSpec("broken-judge", "Always fails.", broken))
        register(JudgeSpec("keyed-judge", "Needs a key.", judge, env_vars=("VICHAT_TEST_MISSING_KEY",)))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    write_report(tmp / "reports" / "paper")
    mp = pytest.MonkeyPatch()
    registry = build_registry([("test-judges", JudgesPlugin())])
    mp.setattr("vichat.app.scoring._registry", lambda: registry)
    mp.setenv("OPENAI_API_KEY", "sk-test-abcdef123456")
    mp.delenv("VICHAT_TEST_MISSING_KEY", raising=False)
    backend = CannedBackend(delay_s=0.01, fail_trigger="#lỗi")
    settings = test_settings(tmp, report_dirs=(tmp / "reports",), max_turns=3, max_input_chars=300,
                             judges=("echo-judge", "broken-judge", "keyed-judge", "echo-auth"), admin_token=ADMIN,
                             export_ttl_s=3)
    with running_app(backend, settings) as (demo, url):
        yield demo, url, backend, settings
    mp.undo()


@pytest.fixture
def client(app):
    return Client(app[1], verbose=False)


def stream(client, *args, api_name):
    """Every output the endpoint streamed, in order."""
    job = client.submit(*args, api_name=api_name)
    outputs = list(job)
    job.result()  # raises AppError if the handler raised
    return outputs


def test_chat_streams_an_answer_in_several_updates(app, client):
    outputs = stream(client, "Xin chào, bạn là ai?", [], "bloomz-chat", "chat", *PAPER, api_name="/chat")
    answers = [text_of(o[0])[-1] for o in outputs if len(text_of(o[0])) == 2]
    partial = sorted(set(a for a in answers if a))
    assert len(partial) >= 3, partial
    final = answers[-1]
    assert final == app[2].answer("bloomz-chat") and final.startswith("Xin chào!")
    assert final.endswith("khi chưa hiểu.")
    assert all(final.startswith(a) for a in partial)
    assert text_of(outputs[-1][0])[0] == "Xin chào, bạn là ai?" and outputs[-1][1] == ""


def test_multi_turn_template_and_decoding_reach_the_backend(app, client):
    backend = app[2]
    history, _ = client.predict("Câu một", [], "gptj-doctor", "doctor", 100, 0.7, 10, 0.9, 1.1, api_name="/chat")
    history, _ = client.predict("Câu hai", history, "gptj-doctor", "doctor", 100, 0.7, 10, 0.9, 1.1, api_name="/chat")
    call = backend.calls[-1]
    assert call["history"] == [("Câu một", text_of(history)[1])]
    assert call["template"] == "doctor" and call["decoding"].temperature == 0.7 and call["decoding"].top_k == 10
    assert text_of(history)[3] == backend.answer("gptj-doctor", 2) and "(lượt 2) Chào bạn" in text_of(history)[3]
    regenerated, _ = client.predict(history, "bloomz-chat", "chat", *PAPER, api_name="/regenerate")
    assert len(text_of(regenerated)) == 4 and text_of(regenerated)[3] == backend.answer("bloomz-chat", 2, "chat")
    assert client.predict(api_name="/clear") == ([], "")


def test_chat_limits_are_enforced_on_the_server(client):
    with pytest.raises(AppError, match="quá dài"):
        client.predict("x" * 301, [], "bloomz-chat", "chat", *PAPER, api_name="/chat")
    history = []
    for k in range(3):
        history, _ = client.predict(f"Câu {k}", history, "bloomz-chat", "chat", 8, 0.5, 20, 1.0, 1.2, api_name="/chat")
    with pytest.raises(AppError, match="3 lượt"):
        client.predict("Câu nữa", history, "bloomz-chat", "chat", *PAPER, api_name="/chat")


def test_a_model_error_is_a_message_and_the_app_stays_up(client):
    with pytest.raises(AppError, match="gặp lỗi"):
        stream(client, "Hỏi #lỗi", [], "bloomz-chat", "chat", *PAPER, api_name="/chat")
    history, _ = client.predict("Vẫn chạy chứ?", [], "bloomz-chat", "chat", *PAPER, api_name="/chat")
    assert "Xin chào" in text_of(history)[1]


def battle(client, prompt="Hà Nội có gì đẹp?", api_name="/battle_send", models=()):
    outputs = stream(client, prompt, *models, api_name=api_name)
    last = outputs[-1]
    return outputs, last


def test_battle_vote_is_persisted_once_and_names_appear_after_it(app, client):
    settings = app[3]
    before = len(votes_in(settings.votes_db))
    outputs, last = battle(client)
    chat_a, chat_b, status = last[0], last[1], last[2]
    assert chat_a["label"] == "Mô hình A" and chat_b["label"] == "Mô hình B"  # blind until the vote
    both_partial = [o for o in outputs if 0 < len(text_of(o[0])[-1]) and 0 < len(text_of(o[1])[-1])
                    and not text_of(o[0])[-1].endswith(".") and not text_of(o[1])[-1].endswith(".")]
    assert both_partial, "the two sides should stream at the same time"
    assert "Câu trả lời nào tốt hơn" in status
    answer_a, answer_b = text_of(chat_a)[-1], text_of(chat_b)[-1]

    label_a, label_b, reveal = client.predict(api_name="/battle_vote_b")[:3]
    battle_id = BATTLE_ID.search(reveal).group(1)
    rows = [r for r in votes_in(settings.votes_db) if r["battle_id"] == battle_id]
    assert len(rows) == 1
    row = rows[0]
    assert row["vote"] == "b" and row["mode"] == "anonymous"
    assert row["model_a"] != row["model_b"]
    assert label_a["label"] == f"A · {row['model_a']}" and row["model_a"] in reveal and row["model_b"] in reveal
    backend = app[2]
    assert answer_a == backend.answer(row["model_a"]) and answer_b == backend.answer(row["model_b"])
    assert not any(m.name in answer_a + answer_b for m in backend.models())  # canned answers name no model
    assert row["prompt"] == "Hà Nội có gì đẹp?" and row["answer_a"] == answer_a and row["answer_b"] == answer_b
    assert json.loads(row["decoding"])["a"]["max_new_tokens"] == 256
    assert len(row["session"]) == 32 and row["voted_at"] >= row["started_at"]

    again = client.predict(api_name="/battle_vote_a")[2]
    assert "một phiếu" in again
    assert len(votes_in(settings.votes_db)) == before + 1
    assert [r["vote"] for r in votes_in(settings.votes_db) if r["battle_id"] == battle_id] == ["b"]


def test_vote_before_any_answer_is_refused(client):
    client.predict(api_name="/battle_new")
    status = client.predict(api_name="/battle_vote_tie")[2]
    assert "Không tìm thấy" in status or "Chưa có" in status


def test_both_bad_is_stored_as_its_own_outcome(app, client):
    battle(client)
    reveal = client.predict(api_name="/battle_vote_both_bad")[2]
    battle_id = BATTLE_ID.search(reveal).group(1)
    [row] = [r for r in votes_in(app[3].votes_db) if r["battle_id"] == battle_id]
    assert row["vote"] == "both_bad"


def test_leaderboard_updates_after_votes(app, client):
    table, summary = client.predict(False, api_name="/leaderboard")
    before = {r[1]: r for r in table["data"]}
    battle(client, "Món phở ngon nhất ở đâu?")
    reveal = client.predict(api_name="/battle_vote_a")[2]
    battle_id = BATTLE_ID.search(reveal).group(1)
    [row] = [r for r in votes_in(app[3].votes_db) if r["battle_id"] == battle_id]
    table, summary = client.predict(False, api_name="/leaderboard")
    after = {r[1]: r for r in table["data"]}
    battles_col = table["headers"].index("Số trận")
    wins_col = table["headers"].index("Thắng")
    winner = row["model_a"]
    assert after[winner][battles_col] == (before[winner][battles_col] if winner in before else 0) + 1
    assert after[winner][wins_col] == (before[winner][wins_col] if winner in before else 0) + 1
    assert "phiếu" in summary


def test_named_side_by_side_votes_are_kept_apart(app, client):
    _, last = battle(client, "So sánh giúp tôi", api_name="/sbs_send", models=("bloomz-chat", "gptj-chat"))
    assert last[0]["label"] == "A · bloomz-chat"
    reveal = client.predict(api_name="/sbs_vote_tie")[2]
    battle_id = BATTLE_ID.search(reveal).group(1)
    [row] = [r for r in votes_in(app[3].votes_db) if r["battle_id"] == battle_id]
    assert (row["mode"], row["model_a"], row["model_b"], row["vote"]) == ("named", "bloomz-chat", "gptj-chat", "tie")
    anonymous_only, _ = client.predict(False, api_name="/leaderboard")
    with_named, _ = client.predict(True, api_name="/leaderboard")
    n = lambda t: sum(r[t["headers"].index("Số trận")] for r in t["data"])  # noqa: E731
    assert n(with_named) >= n(anonymous_only) + 2
    with pytest.raises(AppError, match="khác nhau"):
        stream(client, "Hỏi", "bloomz-chat", "bloomz-chat", api_name="/sbs_send")


def test_a_failing_side_blocks_the_vote_but_not_the_app(client):
    _, last = battle(client, "Câu hỏi #lỗi")
    assert "gặp lỗi" in last[2]
    assert "Mô hình A" == last[0]["label"]
    assert "bloomz" not in last[2] and "gptj" not in last[2]  # a blind battle stays blind
    assert "lỗi" in client.predict(api_name="/battle_vote_a")[2]
    _, last = battle(client, "Câu hỏi bình thường")  # a new battle starts
    assert "Câu trả lời nào tốt hơn" in last[2]


def test_export_votes_as_jsonl(app, client):
    battle(client)
    client.predict(api_name="/battle_vote_a")
    with pytest.raises(AppError, match="Sai mã quản trị"):
        client.predict("not-the-token", api_name="/export_votes")
    before = set(Path(tempfile.gettempdir()).glob("vichat-votes-*"))
    update = client.predict(ADMIN, api_name="/export_votes")
    made = set(Path(tempfile.gettempdir()).glob("vichat-votes-*")) - before
    assert len(made) == 1
    path = update["value"] if isinstance(update, dict) else update
    lines = open(path, encoding="utf-8").read().splitlines()
    assert len(lines) == len(votes_in(app[3].votes_db))
    assert {"battle_id", "model_a", "model_b", "vote", "prompt", "answer_a", "answer_b", "decoding",
            "session", "address", "voted_at"} <= set(json.loads(lines[0]))
    deadline = time.monotonic() + 60
    while any(p.exists() for p in made) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(p.exists() for p in made)  # the server's file is removed after the download window


def test_scoring_with_a_judge_plugin(client):
    summary, aspects, explanation = client.predict(
        "echo-judge", "echo-2", "vicuna-general@v1", True, "Câu hỏi?", "Trả lời 1", "Trả lời 2", api_name="/score")
    assert "Trợ lý 1: 8" in summary and "Trợ lý 2: 6" in summary and "Trợ lý 1 tốt hơn" in summary
    assert aspects["data"][0] == ["helpfulness", "8", "6"]
    assert "echo-2" in explanation


def test_judge_errors_are_messages_and_keys_never_shown(client):
    summary, _, _ = client.predict("broken-judge", "", "vicuna-general@v1", False, "Q?", "A1", "A2", api_name="/score")
    assert "gặp lỗi" in summary and "sk-test" not in summary and "***" in summary
    with pytest.raises(AppError, match="VICHAT_TEST_MISSING_KEY"):
        client.predict("keyed-judge", "", "vicuna-general@v1", False, "Q?", "A1", "A2", api_name="/score")


def test_keys_are_masked_in_the_judge_explanation_too(client):
    summary, _, explanation = client.predict("echo-auth", "", "vicuna-general@v1", False, "Q?", "A1", "A2",
                                             api_name="/score")
    assert "Bearer ***" in explanation and "sk-test" not in explanation + summary


def test_private_events_are_not_callable_by_name(app):
    url = app[1]
    for name in ("judge_default_model", "refresh", "poll", "no_such_endpoint"):
        r = httpx.post(f"{url}gradio_api/call/{name}", json={"data": ["openai"]}, timeout=120)
        assert r.status_code == 404, (name, r.status_code)
        assert httpx.post(f"{url}gradio_api/run/{name}", json={"data": []}, timeout=120).status_code == 404
    public = httpx.post(f"{url}gradio_api/call/leaderboard", json={"data": [False]}, timeout=120)
    assert public.status_code == 200 and "event_id" in public.json()
    # Generation cannot skip the queue (and its concurrency limit) through the direct route.
    direct = httpx.post(f"{url}gradio_api/run/chat", json={"data": ["Xin chào", [], "bloomz-chat", "chat", *PAPER]},
                        timeout=120)
    assert direct.status_code == 404 and "queue" in direct.text


def test_score_from_the_current_battle(client):
    _, last = battle(client, "Vì sao bầu trời màu xanh?")
    question, a1, a2, note = client.predict(api_name="/score_from_battle")
    assert question == "Vì sao bầu trời màu xanh?"
    assert a1 == text_of(last[0])[-1] and a2 == text_of(last[1])[-1]
    assert "bloomz" not in note and "gptj" not in note  # not voted yet: no names


def test_report_table_and_chart(client):
    table, chart, image, details = client.predict("reports/paper", api_name="/report")
    assert table["headers"] == ["Tasks", "Samples", "Baseline", "Bloomz-Chat", "GPTJ-Chat"]
    assert [r[0] for r in table["data"]] == ["Generic", "Common-Sense", "Total"]
    assert details.startswith("# Evaluation report")


def test_a_fixed_judge_model_wins_over_the_visitor(tmp_path, monkeypatch):
    from app_support import test_settings as settings_for

    from vichat.app.context import AppContext
    from vichat.app.scoring import ScoringHandlers

    registry = build_registry([("test-judges", JudgesPlugin())])
    monkeypatch.setattr("vichat.app.scoring._registry", lambda: registry)
    ctx = AppContext.create(CannedBackend(), settings_for(tmp_path, judge_model="cheap-judge",
                                                          judges=("echo-judge",)))
    h = ScoringHandlers(ctx)
    assert h.judges() == ["echo-judge"]
    assert h.judge_default_model("echo-judge") == "cheap-judge"
    _, _, explanation = h.score("echo-judge", "gpt-4-32k", "vicuna-general@v1", False, "Q?", "A1", "A2")
    assert "cheap-judge" in explanation and "gpt-4-32k" not in explanation


def test_stopping_a_battle_still_allows_a_vote_on_what_was_answered(tmp_path):
    import random

    from app_support import test_settings as settings_for

    from vichat.app.arena import ArenaHandlers
    from vichat.app.context import AppContext
    from vichat.app.generation import set_backend

    backend = CannedBackend(delay_s=0.03)
    set_backend(backend)
    ctx = AppContext.create(backend, settings_for(tmp_path, min_answer_chars=15))

    def stopped_battle(after_views: int) -> list:
        h = ArenaHandlers(ctx, "anonymous", random.Random(0))
        views = []
        for k, view in enumerate(h.send_anonymous("Dừng giữa chừng nhé", "")):
            views.append(view)
            if k == after_views:
                h.stop()
        return h, views[-1]

    # Stopped at the first words: below the minimum, so the battle cannot be voted on.
    h, view = stopped_battle(1)
    assert "ngắn hơn 15 ký tự" in view[3] and not any(b["interactive"] for b in view[5:])
    assert "ngắn hơn 15 ký tự" in h.vote("a", view[0])[2]
    assert votes_in(ctx.settings.votes_db) == []
    # Stopped later, with both answers past the minimum: the vote is on what was answered.
    h, view = stopped_battle(8)
    battle_id, status, buttons = view[0], view[3], view[5:]
    assert "Đã dừng" in status and all(b["interactive"] for b in buttons)
    reveal = h.vote("b", battle_id)[2]
    assert "Đã ghi nhận" in reveal
    [row] = votes_in(ctx.settings.votes_db)
    assert row["vote"] == "b" and 15 <= len(row["answer_a"]) < 150  # partial answers, as shown
