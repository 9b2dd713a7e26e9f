"""Findings of a user-level review, checked through the real HTTP API (gradio_client against the app
launched on 127.0.0.1) and, for what only the server's own log shows, against `vichat serve --fake`:
blind battles whose model fails, judge prompts named by id, refusals in the log, invisible
messages, consecutive user messages, canned answers in a blind battle, and a quiet log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from app_support import free_port, running_app, test_settings, text_of
from gradio_client import Client
from gradio_client.exceptions import AppError

from vichat.app.fake import CannedBackend
from vichat.app.settings import Rate
from vichat.plugins import build_registry
from vichat.serve.api import ModelError, ModelInfo
from test_app_client import JudgesPlugin

REPO = Path(__file__).resolve().parents[1]
PAPER = (256, 0.5, 20, 1.0, 1.2)
HEADER = "x-test-client"
# What real failures said in the page before: a server URL and port, a config file and line, an
# adapter path, a remote's own model name.
URL_ERROR = "the server at http://127.0.0.1:59999/v1 failed: Connection error."
PATH_ERROR = ("cfg/missing_ad.yaml:5: cannot load the adapter of model 'tiny-chat' from /tmp/vichat-x/nope/adapter "
              "(remote model: Qwen/Qwen2-0.5B-Instruct)")
MODELS = (ModelInfo("tiny", "Mô hình nhỏ", "chat"), ModelInfo("tiny-chat", "Mô hình nhỏ, hội thoại", "chat"))


class FailingBackend:
    """Canned answers; a message with ``#url`` makes ``tiny`` fail with a server URL, ``#path`` makes
    ``tiny-chat`` fail with a configuration file, line and adapter path, ``#cả`` makes both fail."""

    def __init__(self) -> None:
        self.inner = CannedBackend(MODELS, delay_s=0.005)
        self.calls = self.inner.calls

    def models(self):
        return self.inner.models()

    def stream(self, model, message, history=(), **kwargs):
        if model == "tiny" and ("#url" in message or "#cả" in message):
            raise ModelError(f"model {model!r}: {URL_ERROR}")
        if model == "tiny-chat" and ("#path" in message or "#cả" in message):
            raise ModelError(PATH_ERROR)
        yield from self.inner.stream(model, message, history, **kwargs)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("review")
    mp = pytest.MonkeyPatch()
    registry = build_registry([("test-judges", JudgesPlugin())])
    mp.setattr("vichat.app.scoring._registry", lambda: registry)
    settings = test_settings(tmp, judges=("echo-judge",), session_rate=Rate(1, 3600), trusted_proxy_header=HEADER)
    with running_app(FailingBackend(), settings) as (demo, url):
        yield demo, url
    mp.undo()


def visitor(url: str, address: str) -> Client:
    """A fresh session from ``address`` (one session per address: the app's session limit is 1/hour)."""
    return Client(url, verbose=False, headers={HEADER: address}, httpx_kwargs={"timeout": 120})


def final(client: Client, *args, api_name: str):
    job = client.submit(*args, api_name=api_name)
    outputs = list(job)
    job.result()
    return outputs[-1]


# -- 1. a failing model does not unmask a blind battle ----------------------------------------------
LEAKS = ("127.0.0.1", "59999", "http", "/tmp", "yaml", ":5", "adapter", "Qwen", "tiny", "Connection")


@pytest.mark.parametrize("trigger, sides", [("#url", {"tiny"}), ("#path", {"tiny-chat"}), ("#cả", {"tiny", "tiny-chat"})])
def test_a_failing_model_shows_only_an_anonymous_error_before_the_vote(app, caplog, trigger, sides):
    demo, url = app
    caplog.set_level(logging.INFO, logger="vichat.app")
    c = visitor(url, f"203.0.113.{len(trigger) + len(sides) * 10}")
    last = final(c, f"Câu hỏi {trigger}", api_name="/battle_send")
    status = last[2]
    assert "gặp lỗi; hãy thử lại" in status and "Trận mới" in status
    for leak in LEAKS:
        assert leak not in status, (leak, status)
    assert last[0]["label"] == "Mô hình A" and last[1]["label"] == "Mô hình B"
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("battle ") and "failed:" in r.getMessage()]
    failed_models = {m for m in ("tiny", "tiny-chat") for line in logged if f"model '{m}' failed" in line}
    assert failed_models == sides, logged  # the operator gets every failing side, in full
    if "tiny" in sides:
        assert any(URL_ERROR in line for line in logged)
    if "tiny-chat" in sides:
        assert any(PATH_ERROR in line for line in logged)
    side_of = {line.split("side ")[1][0]: line for line in logged}
    if len(sides) == 2:
        assert status.startswith("⚠️ Cả hai mô hình gặp lỗi")
    else:
        [side] = side_of
        assert f"Mô hình {side} gặp lỗi" in status and f"Mô hình {'B' if side == 'A' else 'A'} gặp lỗi" not in status
    assert "lỗi" in c.predict(api_name="/battle_vote_a")[2]  # still no vote on a failed battle


def test_the_named_mode_still_shows_the_error_as_the_chat_tab_does(app):
    _, url = app
    c = visitor(url, "203.0.113.90")
    status = final(c, "So sánh #url", "tiny", "tiny-chat", api_name="/sbs_send")[2]
    assert "gặp lỗi" in status and "Connection error" in status and "tiny" in status


def test_with_error_detail_off_visitors_read_only_that_it_failed_and_the_log_has_the_rest(app, caplog):
    from vichat.app.safety import HIDDEN_DETAIL

    demo, url = app
    caplog.set_level(logging.INFO, logger="vichat.app")
    ctx = demo.vichat
    kept, ctx.settings = ctx.settings, ctx.settings.with_(error_detail=False)  # what a Space gets
    try:
        c = visitor(url, "203.0.113.95")
        with pytest.raises(AppError) as chat_error:
            c.predict("Câu hỏi #url", [], "tiny", "chat", *PAPER, api_name="/chat")
        named = final(c, "So sánh #path", "tiny", "tiny-chat", api_name="/sbs_send")[2]
    finally:
        ctx.settings = kept
    for shown in (str(chat_error.value), named):
        assert HIDDEN_DETAIL in shown and "gặp lỗi" in shown
        assert not any(leak in shown for leak in ("127.0.0.1", "59999", "/tmp", "yaml", "Qwen")), shown
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert URL_ERROR in logged and PATH_ERROR in logged


def test_error_detail_is_off_on_a_space_unless_the_operator_turns_it_on():
    from vichat.app.settings import AppSettings

    assert AppSettings.from_env({}).error_detail is True
    assert AppSettings.from_env({"SPACE_ID": "someone/vichat"}).error_detail is False
    assert AppSettings.from_env({"SPACE_ID": "someone/vichat", "VICHAT_ERROR_DETAIL": "1"}).error_detail is True
    assert AppSettings.from_env({"VICHAT_ERROR_DETAIL": "0"}).error_detail is False


# -- 2. a judge prompt by id, as docs/app.md promises ------------------------------------------------
def test_score_takes_a_judge_prompt_by_id_through_the_api(app, capfd):
    _, url = app
    c = visitor(url, "203.0.113.91")
    for key in ("vicuna-general", "vicuna-general@v1"):
        summary, _, explanation = c.predict("echo-judge", "echo-2", key, False, "Câu hỏi?", "Trả lời 1", "Trả lời 2",
                                            api_name="/score")
        assert "Trợ lý 1: 8" in summary and "echo-2" in explanation
    with pytest.raises(AppError, match="Không có lời nhắc chấm điểm"):
        c.predict("echo-judge", "", "vicuna-nope", False, "Q?", "A1", "A2", api_name="/score")
    assert "Traceback" not in capfd.readouterr().err


# -- 3. a refused new session is one line in the log, with the address hashed ------------------------
def test_session_limit_refusals_are_one_log_line_each(app, caplog, capfd):
    demo, url = app
    caplog.set_level(logging.INFO, logger="vichat.app")
    address = "198.51.100.77"
    visitor(url, address).predict("Xin chào", [], "tiny", "chat", *PAPER, api_name="/chat")  # its one session
    for api in ("/battle_send", "/chat", "/battle_vote_a"):
        c = visitor(url, address)  # a new session from the same address: over the limit (1/hour)
        if api == "/battle_vote_a":
            assert "quá nhiều phiên mới" in c.predict(api_name=api)[2]
        elif api == "/chat":
            with pytest.raises(AppError, match="quá nhiều phiên mới"):
                c.predict("Xin chào", [], "tiny", "chat", *PAPER, api_name=api)
        else:
            with pytest.raises(AppError, match="quá nhiều phiên mới"):
                c.predict("Xin chào", api_name=api)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(lines) == 3, lines
    expected = demo.vichat.identities.address(type("R", (), {"headers": {HEADER: address}, "client": None})())[:12]
    for line, what in zip(lines, ("battle_send", "chat", "vote")):
        assert line.startswith(f"refused {what}") and f"(address {expected})" in line and "phiên mới" in line
        assert address not in line
    assert "Traceback" not in capfd.readouterr().err


# -- 4. an invisible message is an empty one ------------------------------------------------------------
@pytest.mark.parametrize("api", ["/chat", "/battle_send"])
def test_a_message_of_zero_width_characters_is_refused_as_empty(app, api):
    _, url = app
    c = visitor(url, f"203.0.113.{100 + len(api)}")
    args = ("\u200b\u200b", [], "tiny", "chat", *PAPER) if api == "/chat" else ("\u200b\ufeff\u200d",)
    with pytest.raises(AppError, match="tin nhắn đang trống"):
        c.predict(*args, api_name=api)


# -- 5. two user messages in a row reach the model -------------------------------------------------------
def test_two_user_messages_in_a_row_are_merged_into_one_turn(app):
    demo, url = app
    c = visitor(url, "203.0.113.120")
    history = [{"role": "user", "content": [{"type": "text", "text": "Tôi tên là Lan."}]},
               {"role": "user", "content": [{"type": "text", "text": "Tôi sống ở Huế."}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Chào Lan!"}]}]
    out, _ = c.predict("Tôi tên gì, sống ở đâu?", history, "tiny", "chat", *PAPER, api_name="/chat")
    call = [x for x in demo.vichat.backend.calls if x["message"] == "Tôi tên gì, sống ở đâu?"][-1]
    assert call["history"] == [("Tôi tên là Lan.\nTôi sống ở Huế.", "Chào Lan!")]
    assert text_of(out)[0] == "Tôi tên là Lan.\nTôi sống ở Huế." and len(text_of(out)) == 4


# -- 6. canned answers keep a blind battle blind -----------------------------------------------------------
def test_canned_battle_answers_do_not_name_the_models(app):
    demo, url = app
    c = visitor(url, "203.0.113.121")
    last = final(c, "Kể tên ba món ăn Việt Nam.", api_name="/battle_send")
    a, b = text_of(last[0])[-1], text_of(last[1])[-1]
    assert a and b and a != b
    assert not any(name in a + b for name in ("tiny", "tiny-chat")), (a, b)


# -- 8. the API table lists every public endpoint ------------------------------------------------------------
def test_every_public_endpoint_is_in_the_api_table(app):
    demo, _ = app
    doc = (REPO / "docs" / "app.md").read_text(encoding="utf-8")
    table = doc[doc.index("## API (gradio_client)"):doc.index("## Configuration")]
    public = {fn.api_name for fn in demo.fns.values()  # "undocumented" (the examples) are not on the API page
              if getattr(fn, "api_visibility", "public") == "public" and isinstance(fn.api_name, str)}
    assert "chat_model" in public
    missing = []
    for name in sorted(public):
        head = re.sub(r"_(vote_.*|new|stop|send)$", "", name)
        tail = name[len(head):]
        spelled = {f"`/{name}`", f"/{name}`", f"`/{head}{tail.split('_')[0]}_*`" if tail.startswith("_vote") else "",
                   f"`/{head}_vote_a`" if tail.startswith("_vote") else "", f"`/{head}_new`" if tail else ""}
        if not any(s and s in table for s in spelled):
            missing.append(name)
    assert not missing, f"public endpoints missing from docs/app.md's API table: {missing}"


# -- 3, 7, 9 as an operator sees them: the log of `vichat serve` ------------------------------------------------
def test_vichat_serve_logs_refusals_and_no_warnings(tmp_path):
    port = free_port()
    env = {**os.environ, "VICHAT_VOTES_DB": str(tmp_path / "votes.sqlite"), "VICHAT_SESSION_SALT": "serve-salt",
           "VICHAT_SESSION_RATE": "1/3600", "GRADIO_ANALYTICS_ENABLED": "False", "VICHAT_BOOTSTRAP_ROUNDS": "20",
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vichat.cli", "serve", "--fake", "--host", "127.0.0.1", "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert proc.poll() is None, "".join(lines)
        url = f"http://127.0.0.1:{port}/"
        first = Client(url, verbose=False)
        first.predict("Xin chào", api_name="/battle_send")
        first.predict(api_name="/battle_vote_a")
        first.predict(False, api_name="/leaderboard")
        with pytest.raises(AppError, match="phiên mới"):
            Client(url, verbose=False).predict("Xin chào", api_name="/battle_send")  # a second session: refused
        time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    refused = [line for line in out.splitlines() if "refused battle_send" in line]
    assert len(refused) == 1 and "(address " in refused[0] and "127.0.0.1" not in refused[0], out
    assert "unclosed event loop" not in out, out
    assert "no_silent_downcasting" not in out and "copy keyword" not in out, out
    assert "Traceback" not in out, out


# -- bad dropdown and slider values: the client's message, one log line, no traceback -------------------------
def test_bad_choices_and_out_of_range_values_are_one_log_line(app, caplog, capfd):
    _, url = app
    caplog.set_level(logging.INFO, logger="vichat.app")
    c = visitor(url, "203.0.113.130")
    bad = [(("Xin chào", [], "no-such-model", "chat", *PAPER), "/chat", "not in the list of choices"),
           (("Xin chào", [], "tiny", "chat", 10**6, 0.5, 20, 1.0, 1.2), "/chat", "maximum"),
           (("Xin chào", "tiny", "nope"), "/sbs_send", "not in the list of choices"),
           (("no-judge", "", "vicuna-general", False, "Q?", "A1", "A2"), "/score", "not in the list of choices")]
    for args, api, match in bad:
        with pytest.raises(AppError, match=match):
            c.predict(*args, api_name=api)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert [line.split(":")[0] for line in lines] == ["refused chat", "refused chat", "refused sbs_send",
                                                      "refused score"], lines
    assert "Traceback" not in capfd.readouterr().err
