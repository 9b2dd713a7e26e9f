"""Units behind the public-Space defences: safe Markdown, one-pass prompt fitting, client
addresses and session tokens, persisted limits, the v1 -> v2 votes migration, de-duplication and
the leaderboard audit."""

from __future__ import annotations

import json
import random
import sqlite3

import pytest
from click.testing import CliRunner
from test_arena_votes import make_vote

from vichat.arena.audit import audit
from vichat.app.commands import arena
from vichat.app.render import safe_markdown
from vichat.app.safety import LimitError, check_conversation
from vichat.arena.session import Identities, SessionHasher, SessionLimitError, client_address
from vichat.app.settings import AppSettings, SettingsError
from vichat.arena.votes import SCHEMA_VERSION, VoteStore, deduplicated
from vichat.data.templates import CHAT
from vichat.serve.history import fit_prompt, fold_history


# -- rendering -------------------------------------------------------------------------------------
def test_safe_markdown_drops_forms_buttons_and_outside_images_but_keeps_code_and_math():
    out = safe_markdown('<form action="/x"><button>Bấm</button></form> và <img src="http://e.com/a.png">')
    assert "<form" not in out and "<button" not in out and "<img" not in out
    assert "&lt;form" in out and "Bấm" in out  # shown as text, nothing lost
    assert safe_markdown("![mèo](http://e.com/cat.png)") == "[🖼 mèo](http://e.com/cat.png)"
    code = "```html\n<form><button>x</button></form>\n```"
    assert safe_markdown(code + "\nvà `<img src=x>`") == code + "\nvà `<img src=x>`"
    assert safe_markdown("**đậm** <b onclick='x()'>b</b> <br>") == "**đậm** <b>b</b> <br>"
    assert safe_markdown("$a<b$ và $$x<y$$") == "$a< b$ và $$x< y$$"  # same formula, no tag
    assert safe_markdown("giá 5$ hay 6$, 3 < 4") == "giá 5$ hay 6$, 3 < 4"
    assert "<script" not in safe_markdown("<script>alert(1)</script>")
    assert "<svg" not in safe_markdown("<svg/onload=alert(1)>")


# -- input limits ----------------------------------------------------------------------------------
def test_check_conversation_bounds_every_part_of_a_history():
    ok = dict(max_chars=10, max_turns=3, max_answer_chars=20, max_history_chars=40)
    assert check_conversation(" xin chào ", [("a", "b")], **ok) == "xin chào"
    for turns, message, match in [
        ([("a" * 11, "b")], "hỏi", "Lượt 1"),
        ([("a", "b" * 21)], "hỏi", "lượt 1 quá dài"),
        ([("a" * 10, "b" * 20), ("a" * 10, "b")], "hỏi", "Cuộc trò chuyện quá dài"),
        ([("a", "b")] * 3, "hỏi", "3 lượt"),
        ([], "  ", "trống"),
        ([], "x" * 11, "quá dài"),
    ]:
        with pytest.raises(LimitError, match=match):
            check_conversation(message, turns, **ok)


# -- fit_prompt ------------------------------------------------------------------------------------
def _naive_fit(encode, template, message, history, context, max_new_tokens):
    """The former algorithm: one full re-encode per dropped turn."""
    budget = context - max_new_tokens
    for dropped in range(len(history) + 1):
        ids = encode(fold_history(template, message, history[dropped:]))
        if len(ids) <= budget:
            return ids, dropped
    return None, None


def _merging_encode(text: str) -> list[int]:
    """Bytes, except that "\\n#" is one token: counts of pieces do not add up to the whole."""
    data = text.encode()
    out, k = [], 0
    while k < len(data):
        if data[k:k + 2] == b"\n#":
            out.append(1000)
            k += 2
        else:
            out.append(data[k])
            k += 1
    return out


@pytest.mark.parametrize("encode", [lambda t: list(t.encode()), _merging_encode])
def test_fit_prompt_trims_in_one_pass_with_the_same_result(encode):
    rng = random.Random(3)
    calls = [0]

    def counted(text):
        calls[0] += 1
        return encode(text)

    for trial in range(30):
        history = [(f"câu {k} " * rng.randint(1, 30), f"đáp {k} " * rng.randint(1, 60)) for k in range(40)]
        context = rng.randint(300, 6000)
        calls[0] = 0
        fitted = fit_prompt(counted, CHAT, "Câu cuối?", history, context=context, max_new_tokens=64)
        ids, dropped = _naive_fit(encode, CHAT, "Câu cuối?", history, context, 64)
        assert (fitted.ids, fitted.turns_dropped) == (ids, dropped)
        assert fitted.text == fold_history(CHAT, "Câu cuối?", history[dropped:])
        # one encode per turn plus a handful, not one full prompt per dropped turn
        assert calls[0] <= len(history) + 6, calls[0]


# -- who is asking ---------------------------------------------------------------------------------
class FakeRequest:
    def __init__(self, host="203.0.113.5", session_hash="s1", headers=None):
        self.client = type("C", (), {"host": host})()
        self.session_hash = session_hash
        self.headers = headers or {}


def test_client_address_trusts_only_the_configured_header_and_hops():
    spoofed = FakeRequest(headers={"x-forwarded-for": "1.1.1.1, 198.51.100.9"})
    assert client_address(spoofed) == "203.0.113.5"  # no header configured: the TCP peer
    assert client_address(spoofed, "x-forwarded-for") == "198.51.100.9"  # what the proxy appended
    assert client_address(spoofed, "x-forwarded-for", hops=2) == "1.1.1.1"
    assert client_address(FakeRequest(host="2001:db8:1:2:aaaa::1")) == "2001:db8:1:2::/64"
    assert client_address(FakeRequest(host="::ffff:192.0.2.1")) == "192.0.2.1"


def test_session_tokens_are_signed_bound_to_the_address_and_limited(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    ids = Identities(SessionHasher("salt"), lambda a: store.take([("session", a, 2, 3600)]))
    first = ids.visitor(FakeRequest(session_hash="g1"))
    assert ids.visitor(FakeRequest(session_hash="g1")) == first  # the same Gradio session keeps its token
    assert first.address == SessionHasher("salt")("address:203.0.113.5") and "203" not in first.address
    token = ids._tokens["g1"]
    assert ids.verify(token, first.address) == first.session
    assert ids.verify(token, "another-address") is None
    assert ids.verify(token[:-1] + ("0" if token[-1] != "0" else "1"), first.address) is None
    ids.visitor(FakeRequest(session_hash="g2"))
    with pytest.raises(SessionLimitError, match="quá nhiều phiên"):
        ids.visitor(FakeRequest(session_hash="g3"))  # a third new session from the address
    assert ids.visitor(FakeRequest(host="192.0.2.8", session_hash="g4")).address != first.address


def test_limits_are_all_or_nothing_and_survive_a_restart(tmp_path):
    db = tmp_path / "v.sqlite"
    store = VoteStore(db)
    assert store.take([("vote", "s", 2, 60), ("vote", "a", 3, 60)], at=100.0) == 0
    assert store.take([("vote", "s", 2, 60), ("vote", "a", 3, 60)], at=101.0) == 0
    wait = store.take([("vote", "s", 2, 60), ("vote", "a", 3, 60)], at=102.0)
    assert wait == pytest.approx(58.0)
    # The refused event recorded nothing: the address still has one slot for another session.
    assert VoteStore(db).take([("vote", "s2", 2, 60), ("vote", "a", 3, 60)], at=103.0) == 0
    assert VoteStore(db).take([("vote", "s3", 2, 60), ("vote", "a", 3, 60)], at=104.0) > 0
    assert VoteStore(db).take([("vote", "s", 2, 60)], at=161.0) == 0  # the window moved on
    assert store.take([("vote", "x", 0, 60)] * 5) == 0  # 0: no limit


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as con:
        con.executescript("""
            CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, battle_id TEXT NOT NULL UNIQUE,
              mode TEXT NOT NULL, model_a TEXT NOT NULL, model_b TEXT NOT NULL, vote TEXT NOT NULL,
              prompt TEXT NOT NULL, answer_a TEXT NOT NULL, answer_b TEXT NOT NULL, turns TEXT NOT NULL DEFAULT '[]',
              decoding TEXT NOT NULL DEFAULT '{}', session TEXT NOT NULL, started_at REAL NOT NULL,
              voted_at REAL NOT NULL, app_version TEXT NOT NULL DEFAULT '');
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('schema_version', '1');
            INSERT INTO votes (battle_id, mode, model_a, model_b, vote, prompt, answer_a, answer_b, session,
              started_at, voted_at) VALUES ('old', 'anonymous', 'x', 'y', 'a', 'p', 'A', 'B', 'sess', 1, 2);
        """)
    store = VoteStore(db)
    [old] = list(store.iter_votes())
    assert old.battle_id == "old" and old.address == ""
    store.add(make_vote("new", address="f" * 32))
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert con.execute("SELECT address FROM votes ORDER BY id").fetchall() == [("",), ("f" * 32,)]
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    VoteStore(db)  # opening again changes nothing
    assert [v.battle_id for v in VoteStore(db).iter_votes()] == ["old", "new"]


# -- leaderboard robustness ------------------------------------------------------------------------
def _ballots():
    out = []
    for k in range(60):  # one address, a fresh session per vote, always for model x: the stuffing pattern
        out.append(("x", "y", "a", "stuffer", f"s{k}", 86_400 * 10 + k, f"prompt {k}"))
    for k in range(5):  # an honest visitor, one repeated prompt
        out.append(("x", "y", "b", "honest", "h1", 86_400 * 10 + k, "Hà Nội ở đâu?" if k < 2 else f"q{k}"))
    out.append(("x", "y", "tie", "", "legacy", 1.0, "old"))
    return out


def test_deduplication_caps_bursts_and_repeated_prompts():
    kept = deduplicated(_ballots(), address_cap=50)
    assert len(kept) == 50 + 4 + 1  # 10 over the cap, one repeated prompt
    assert len(deduplicated(_ballots(), address_cap=0)) == 60 + 4 + 1


def test_audit_flags_the_stuffer_not_the_honest_visitor():
    report = audit(_ballots(), address_cap=50)
    assert report["votes"] == 66 and report["left_out"] == 11
    [flagged] = report["flagged"]
    assert flagged["address"] == "stuffer" and flagged["votes"] == 60 and len(flagged["flags"]) == 3
    assert report["per_address"]["max"] == 60 and report["per_session"]["max"] == 5


def test_leaderboard_audit_command(tmp_path):
    db = tmp_path / "v.sqlite"
    store = VoteStore(db)
    for k in range(12):
        store.add(make_vote(f"b{k}", "a", session=f"s{k}", address="a" * 32, prompt=f"p{k}", voted_at=1000.0 + k))
    out = CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--audit", "--address-cap", "10"])
    assert out.exit_code == 0, out.output
    assert "12 votes; the leaderboard counts 10" in out.output and "FLAGGED address aaaaaaaaaaaa" in out.output
    as_json = json.loads(CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--audit", "--json"]).output)
    assert as_json["flagged"][0]["sessions"] == 12
    table = json.loads(CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--json", "--address-cap", "10",
                                                  "--bootstrap", "0"]).output)
    assert sum(r["battles"] for r in table) == 2 * 10  # the rated votes are the de-duplicated ones


def test_new_settings_from_env():
    s = AppSettings.from_env({"VICHAT_ADDRESS_VOTE_RATE": "5/3600", "VICHAT_TRUSTED_PROXY_HEADER": "X-Forwarded-For",
                              "VICHAT_ADMIN_TOKEN": "a-long-enough-admin-token", "VICHAT_MIN_ANSWER_CHARS": "40",
                              "VICHAT_MAX_UPLOAD_SIZE": "2MB"})
    assert s.address_vote_rate.count == 5 and s.trusted_proxy_header == "x-forwarded-for"
    assert s.min_answer_chars == 40 and s.max_upload == "2mb" and "a-long-enough" not in repr(s)
    assert AppSettings.from_env({}).admin_token is None and AppSettings.from_env({}).judges is None
    with pytest.raises(SettingsError, match="VICHAT_ADMIN_TOKEN"):
        AppSettings.from_env({"VICHAT_ADMIN_TOKEN": "short"})


def test_an_unusable_votes_path_falls_back_to_memory_only_when_lenient(tmp_path):
    from vichat.app.context import StorageError, open_votes

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    settings = AppSettings(votes_db=blocker / "votes.sqlite")
    with pytest.raises(StorageError, match="not-a-dir/votes.sqlite.*VICHAT_VOTES_DB"):
        open_votes(settings)
    votes, salt, warnings = open_votes(settings, lenient=True)
    assert not votes.persistent and len(salt) == 64 and "bộ nhớ" in warnings[0]
    votes.add(make_vote("m1"))
    assert [v.battle_id for v in votes.iter_votes()] == ["m1"]  # the fallback works, shared across connections
    assert votes.take([("vote", "k", 1, 60)]) == 0 and votes.take([("vote", "k", 1, 60)]) > 0
