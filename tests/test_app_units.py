"""The app's building blocks without a server: streams, limits, messages, settings, ZeroGPU helper,
reports and the scoring handler with an in-process judge plugin."""

import json
import sys
import threading
import time
import types

import pytest

from vichat.app.controls import clamp_decoding
from vichat.app.fake import CannedBackend
from vichat.app.gpu import gpu
from vichat.app.messages import content_text, last_user_message, to_messages, to_turns
from vichat.app.reports import find_reports, load_report
from vichat.app.safety import LimitError, check_message, check_turns, describe_error, scrub
from vichat.app.settings import AppSettings, Rate, SettingsError
from vichat.app.streams import merge_streams
from vichat.serve.api import ModelError
from vichat.specs import Decoding


# --------------------------------------------------------------------------- streams


def ticking(words, delay, fail_at=None):
    def start(cancel):
        for k, w in enumerate(words):
            if cancel.is_set():
                return
            if k == fail_at:
                raise ModelError("boom")
            time.sleep(delay)
            yield w
    return start


def test_both_sides_progress_at_the_same_time():
    words = [f"w{k} " for k in range(10)]
    snapshots = list(merge_streams([ticking(words, 0.03), ticking(words, 0.03)]))
    # some update shows both sides part-way, neither finished: they interleave
    assert any(0 < len(a.text) < 30 and 0 < len(b.text) < 30 for a, b in snapshots)
    final = snapshots[-1]
    assert final[0].text == final[1].text == "".join(words)
    assert final[0].done and final[1].done


def test_one_side_failing_leaves_the_other_running():
    words = [f"w{k} " for k in range(6)]
    final = list(merge_streams([ticking(words, 0.01, fail_at=2), ticking(words, 0.01)]))[-1]
    assert isinstance(final[0].error, ModelError) and final[0].text == "w0 w1 "
    assert final[1].error is None and final[1].text == "".join(words)


def test_closing_the_merged_stream_cancels_the_backends():
    seen = []

    def start(cancel):
        seen.append(cancel)
        while not cancel.is_set():
            time.sleep(0.01)
            yield "x"

    gen = merge_streams([start, start])
    next(gen)
    gen.close()
    assert len(seen) == 2 and all(c.is_set() for c in seen)


def test_stop_event_ends_the_merge():
    stop = threading.Event()

    def forever(cancel):
        while not cancel.is_set():
            time.sleep(0.01)
            yield "."

    t0 = time.monotonic()
    for k, _ in enumerate(merge_streams([forever, forever], stop=stop)):
        if k == 3:
            stop.set()
    assert time.monotonic() - t0 < 2


def test_a_waiting_side_shows_its_place_apart_from_its_text():
    from vichat.app.generation import shown, waiting_text
    from vichat.app.streams import SideState
    from vichat.serve.api import Queued

    states = [SideState()]
    for item in [Queued(2), Queued(1), Queued(0), "Xin", Queued(1), " chào"]:
        states.append(states[-1].add(item))
    assert [shown(s) for s in states[1:]] == [waiting_text(2), waiting_text(1), "", "Xin", "Xin", "Xin chào"]
    assert all("⏳" not in s.text for s in states)  # the place is shown, never part of the answer

    def waits(cancel):
        yield Queued(1)
        while not cancel.is_set():
            time.sleep(0.01)
            yield Queued(1)

    stop = threading.Event()
    for a, b in merge_streams([waits, ticking(["ok"], 0.01)], stop=stop):
        if a.position and b.done:
            stop.set()  # stopped while queued: the side ends with no text
    assert (a.text, a.position, shown(a), b.text) == ("", 1, waiting_text(1), "ok")


# --------------------------------------------------------------------------- limits and secrets


def test_message_and_turn_limits():
    assert check_message("  Xin cha\u0300o  ", 100) == "Xin chào"  # NFC and stripped
    with pytest.raises(LimitError, match="trống"):
        check_message("   ", 100)
    with pytest.raises(LimitError, match="tối đa 5"):
        check_message("quá dài rồi", 5)
    check_turns(2, 3)
    with pytest.raises(LimitError, match="3 lượt"):
        check_turns(3, 3)


@pytest.mark.parametrize("invisible", ["\u200b\u200b", "\u200c\u200d", "\ufeff", "\u2060 \u200b", "\u200e\u200f",
                                       "\u3164", "\u00ad", " \u034f\t"])
def test_a_message_of_invisible_characters_is_empty(invisible):
    with pytest.raises(LimitError, match="trống"):
        check_message(invisible, 100)


def test_visible_text_with_invisible_characters_is_kept():
    assert check_message("\u200bXin chào\u200d", 100) == "\u200bXin chào\u200d"
    assert check_message("😀", 100) == "😀" and check_message("\u0301a", 100) == "\u0301a"


def test_secrets_are_masked_in_messages(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-1234567890")
    monkeypatch.setenv("VICHAT_MAX_TURNS", "8")
    assert scrub("bad key sk-test-1234567890 rejected") == "bad key *** rejected"
    msg = describe_error(RuntimeError("auth failed for sk-test-1234567890"))
    assert "sk-test" not in msg and "RuntimeError" in msg
    assert describe_error(ModelError("x" * 1000)).endswith("…")


def test_settings_from_env(tmp_path):
    env = {"VICHAT_VOTES_DB": str(tmp_path / "v.sqlite"), "VICHAT_VOTE_RATE": "3/30", "VICHAT_MAX_TURNS": "4",
           "VICHAT_REPORTS": f"{tmp_path}/a:{tmp_path}/b", "VICHAT_APP_JUDGES": "openai", "VICHAT_QUEUE_SIZE": "0",
           "VICHAT_SESSION_SALT": "s3cret-salt"}
    s = AppSettings.from_env(env)
    assert s.votes_db == tmp_path / "v.sqlite" and s.vote_rate == Rate(3, 30.0) and s.max_turns == 4
    assert len(s.report_dirs) == 2 and s.judges == ("openai",) and s.queue_size is None
    assert "s3cret" not in repr(s)
    assert AppSettings.from_env({}).votes_db.as_posix() == "vichat-data/votes.sqlite"
    with pytest.raises(SettingsError, match="VICHAT_VOTE_RATE"):
        AppSettings.from_env({"VICHAT_VOTE_RATE": "often"})
    with pytest.raises(SettingsError, match="VICHAT_MAX_TURNS"):
        AppSettings.from_env({"VICHAT_MAX_TURNS": "zero"})


def test_decoding_clamp_defaults_to_the_paper():
    assert clamp_decoding() == Decoding(256, 0.5, 20, 1.0, 1.2)
    d = clamp_decoding(10**6, -1, 3.7, "x", 9)
    assert d.max_new_tokens == 1024 and d.temperature == 0.0 and d.top_k == 4 and d.top_p == 1.0
    assert d.repetition_penalty == 2.0


# --------------------------------------------------------------------------- messages


def test_messages_with_block_content_become_turns():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Xin chào"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Chào "}, {"type": "text", "text": "bạn"}]},
        {"role": "user", "content": "câu bị lỗi"},  # two user messages in a row: one turn, nothing lost
        {"role": "user", "content": "Bạn khỏe không?"},
        {"role": "assistant", "content": "Khỏe."},
    ]
    assert to_turns(history) == [("Xin chào", "Chào bạn"), ("câu bị lỗi\nBạn khỏe không?", "Khỏe.")]
    assert content_text({"type": "file", "path": "x.png"}) == ""
    turns, last = last_user_message(history)
    assert last == "câu bị lỗi\nBạn khỏe không?" and turns == [("Xin chào", "Chào bạn")]
    assert to_messages([("a", "b")], "c", "") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": ""}]


def test_consecutive_user_messages_are_one_turn_and_none_is_dropped():
    user = lambda t: {"role": "user", "content": t}  # noqa: E731
    bot = lambda t: {"role": "assistant", "content": t}  # noqa: E731
    history = [user("Câu một."), user([{"type": "text", "text": "Câu hai."}]), bot("Trả lời."),
               user("Tiếp:"), user("câu ba")]
    assert to_turns(history) == [("Câu một.\nCâu hai.", "Trả lời.")]  # the unanswered tail is not a turn
    turns, last = last_user_message(history)  # Regenerate answers the whole tail, as one message
    assert turns == [("Câu một.\nCâu hai.", "Trả lời.")] and last == "Tiếp:\ncâu ba"
    # a user message without text (a file) adds no empty line
    assert to_turns([user({"type": "file", "path": "x.png"}), user("Hỏi"), bot("Đáp")]) == [("Hỏi", "Đáp")]


# --------------------------------------------------------------------------- ZeroGPU helper


def test_gpu_is_a_no_op_without_spaces(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails

    def f(x):
        return x + 1

    assert gpu(f) is f and gpu(duration=60)(f) is f


def test_gpu_applies_spaces_gpu_when_importable(monkeypatch):
    calls = []
    fake = types.ModuleType("spaces")

    def GPU(fn=None, duration=None):  # noqa: N802 - spaces' own name
        if fn is None:
            return lambda f: GPU(f, duration)
        calls.append(duration)
        return lambda *a, **k: ("on-gpu", fn(*a, **k))

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu(lambda: 1)() == ("on-gpu", 1)
    assert gpu(duration=90)(lambda: 2)() == ("on-gpu", 2)
    assert calls == [None, 90]
    monkeypatch.setenv("VICHAT_ZEROGPU", "0")
    assert gpu(lambda: 3)() == 3


# --------------------------------------------------------------------------- fake backend


def test_canned_backend_streams_words_and_honours_cancel():
    backend = CannedBackend(delay_s=0)
    deltas = list(backend.stream("bloomz-doctor", "Tôi bị sốt", template="doctor"))
    assert len(deltas) > 10 and "bác sĩ" in "".join(deltas)
    cancel = threading.Event()
    gen = backend.stream("bloomz-chat", "hi", cancel=cancel)
    next(gen)
    cancel.set()
    assert list(gen) == []
    with pytest.raises(ModelError):
        list(backend.stream("nope", "hi"))


def test_canned_answers_never_name_the_model_but_differ_between_models():
    backend = CannedBackend(delay_s=0)
    names = [m.name for m in backend.models()]
    answers = {}
    for name in names:
        for history in ((), (("Hỏi", "Đáp"),)):
            text = "".join(backend.stream(name, "Xin chào", history))
            assert text == backend.answer(name, len(history) + 1)
            assert not any(n in text for n in names) and "bloomz" not in text and "gptj" not in text, text
        answers[name] = "".join(backend.stream(name, "Xin chào", template="chat"))
    assert len(set(answers.values())) == len(names)  # the sides of a battle can still be told apart
    assert "(lượt 2)" in backend.answer(names[0], 2)


def test_anonymise_replaces_whole_names_longest_first():
    from vichat.app.arena import anonymise

    text = "tiny-chat: hết giờ; tiny: lỗi (xem tiny.yaml, tiny-chatbot, my-tiny)."
    assert anonymise(text, ("tiny", "tiny-chat")) == (
        "mô hình B: hết giờ; mô hình A: lỗi (xem tiny.yaml, tiny-chatbot, my-tiny).")
    assert anonymise("tiny-chat và tiny.", ("tiny-chat", "tiny")) == "mô hình A và mô hình B."
    assert anonymise("không có tên", ()) == "không có tên"


# --------------------------------------------------------------------------- reports


def write_report(directory, labels=("Bloomz-Chat", "GPTJ-Chat")):
    directory.mkdir(parents=True)
    models = []
    for k, label in enumerate(labels):
        rows = [{"category": c, "questions": 10, "n": 10, "score": 80.0 + k + j, "ci": [70, 90]}
                for j, c in enumerate(["generic", "common-sense"])]
        models.append({"label": label, "rows": rows,
                       "total": {"category": "total", "questions": 20, "n": 20, "score": 81.0 + k}})
    (directory / "report.json").write_text(json.dumps({"models": models}), encoding="utf-8")
    (directory / "report.md").write_text("# Evaluation report\n", encoding="utf-8")


def test_reports_are_found_and_laid_out_like_table_iii(tmp_path):
    write_report(tmp_path / "reports" / "paper")
    (tmp_path / "reports" / "empty").mkdir()
    found = find_reports([tmp_path / "reports", tmp_path / "missing"])
    assert list(found) == ["reports/paper"]
    view = load_report(found["reports/paper"])
    assert list(view.table.columns) == ["Tasks", "Samples", "Baseline", "Bloomz-Chat", "GPTJ-Chat"]
    assert list(view.table["Tasks"]) == ["Generic", "Common-Sense", "Total"]
    assert view.table.iloc[-1]["GPTJ-Chat"] == 82.0
    assert len(view.chart) == 6 and view.png is None and view.markdown.startswith("# Evaluation")


def test_report_written_by_the_evaluation_package_loads(tmp_path):
    render = pytest.importorskip("vichat.evaluate.render")
    from vichat.evaluate.report import build_report
    from vichat.evaluate.reviews import Verdict

    fields = Verdict.__dataclass_fields__
    if "question_id" not in fields:
        pytest.skip("evaluation Verdict has changed shape")
    pytest.importorskip("matplotlib")
    try:
        verdicts = [_verdict(Verdict, q, cat) for q, cat in enumerate(["generic", "generic", "math"])]
    except TypeError:
        pytest.skip("evaluation Verdict has changed shape")
    report = build_report("Bloomz-Chat", "reviews.jsonl", verdicts, n_boot=50)
    render.write_outputs([report], tmp_path / "r")
    view = load_report(tmp_path / "r")
    assert "Bloomz-Chat" in view.table.columns and view.png is not None


def _verdict(Verdict, q, cat):
    import inspect

    params = inspect.signature(Verdict).parameters
    values = {"question_id": q, "category": cat, "score1": 8.0, "score2": 6.0, "model_score": 6.0,
              "baseline_score": 8.0, "baseline_position": 1, "model_id": "bloomz-chat", "baseline_id": "gpt-3.5",
              "where": f"r:{q}", "error": None}
    return Verdict(**{k: v for k, v in values.items() if k in params})


# --------------------------------------------------------------------------- stop buttons


def test_stop_ends_a_chat_stream_and_a_battle_early():
    from vichat.app.generation import STOPS, SideRequest, set_backend, stream_answer, stream_pair

    set_backend(CannedBackend(delay_s=0.02))
    key = "session:chat"
    event = STOPS.start(key)
    texts = []
    for k, text in enumerate(stream_answer("bloomz-chat", "Xin chào", (), "chat", Decoding(), key)):
        texts.append(text)
        if k == 2:
            assert STOPS.stop(key)
    STOPS.finish(key, event)
    assert 3 <= len(texts) <= 4 and not texts[-1].endswith("hiểu.")

    key = "session:arena"
    event = STOPS.start(key)
    sides = tuple(SideRequest(m, "Hỏi", (), "chat", Decoding()) for m in ("bloomz-chat", "gptj-chat"))
    states = None
    for k, states in enumerate(stream_pair(sides, key)):
        if k == 2:
            STOPS.stop(key)
    STOPS.finish(key, event)
    assert not all(s.text.endswith("hiểu.") for s in states)
    assert not STOPS.stop(key)  # finished generations are forgotten


def test_a_plugins_template_is_offered_in_the_app():
    import vichat.plugins as plugins_module
    from vichat.app.context import registered_templates
    from vichat.plugin import TemplateSpec, hookimpl

    mod = types.ModuleType("teacher")
    mod.register_templates = hookimpl(lambda register: register(TemplateSpec(
        name="teacher", description="Giải thích như một giáo viên.",
        prompt="Bạn là giáo viên.\n### Instruction:\n{instruction}\n### Response:\n")))
    plugins_module._registry = plugins_module.build_registry([("teacher", mod)])
    try:
        assert registered_templates()[:2] == ["chat", "doctor"] and "teacher" in registered_templates()
    finally:
        plugins_module.reset_registry()


def test_scoring_takes_a_prompt_id_or_a_versioned_key():
    from vichat.app.scoring import ScoringHandlers

    h = ScoringHandlers(ctx=None)
    newest = h._prompt("vicuna-general")
    assert newest.prompt_id == "vicuna-general" and h._prompt(newest.key) == newest
    with pytest.raises(Exception, match="Không có lời nhắc"):
        h._prompt("vicuna-generic")
