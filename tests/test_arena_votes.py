"""The SQLite vote store, the session salt and the battle store's rules."""

import json
import sqlite3
import threading

import pytest

from vichat.arena.battles import BattleError, BattleStore
from vichat.arena.session import SALT_FILE, SessionHasher, load_or_create_salt
from vichat.arena.votes import OUTCOMES, DuplicateVoteError, Vote, VoteStore
from vichat.specs import Decoding


def make_vote(battle_id="b1", vote="a", **kw):
    base = dict(
        battle_id=battle_id, mode="anonymous", model_a="bloomz-chat", model_b="gptj-chat", vote=vote,
        prompt="Thủ đô của Việt Nam là gì?", answer_a="Hà Nội.", answer_b="Thành phố Hà Nội.",
        session="abc", started_at=1.0, voted_at=2.0, decoding={"a": {"temperature": 0.5}},
        turns=[{"prompt": "Xin chào", "answer_a": "Chào bạn", "answer_b": "Xin chào!"}],
    )
    base.update(kw)
    return Vote(**base)


def test_vote_is_stored_with_every_field_and_survives_a_restart(tmp_path):
    db = tmp_path / "sub" / "votes.sqlite"
    VoteStore(db).add(make_vote())
    store = VoteStore(db)  # a "restart": a new store on the same file
    [v] = list(store.iter_votes())
    assert v == make_vote()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in con.execute("PRAGMA table_info(votes)")]
    for col in ("battle_id", "mode", "model_a", "model_b", "vote", "prompt", "answer_a", "answer_b", "turns",
                "decoding", "session", "started_at", "voted_at"):
        assert col in cols
    assert "address" in cols and not any(c in ("ip", "user_agent") for c in cols)  # a salted hash only


def test_a_second_vote_for_a_battle_is_refused_by_the_database(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    store.add(make_vote("b1", "a"))
    with pytest.raises(DuplicateVoteError):
        store.add(make_vote("b1", "b"))
    assert store.count() == 1
    assert store.has_vote("b1") and not store.has_vote("b2")


def test_four_distinct_outcomes_and_invalid_ones_rejected(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    for k, outcome in enumerate(OUTCOMES):
        store.add(make_vote(f"b{k}", outcome))
    assert [o[2] for o in store.outcomes()] == ["a", "b", "tie", "both_bad"]
    with pytest.raises(ValueError):
        make_vote("bx", "draw")
    with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint guards the file itself
        with sqlite3.connect(tmp_path / "v.sqlite") as con:
            con.execute("INSERT INTO votes (battle_id, mode, model_a, model_b, vote, prompt, answer_a, answer_b,"
                        " session, started_at, voted_at) VALUES ('z','anonymous','a','b','draw','','','','',0,0)")


def test_outcomes_filter_by_mode_in_vote_order(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    store.add(make_vote("b1", "a"))
    store.add(make_vote("b2", "b", mode="named"))
    store.add(make_vote("b3", "tie"))
    assert [o[2] for o in store.outcomes()] == ["a", "tie"]
    assert [o[2] for o in store.outcomes(("anonymous", "named"))] == ["a", "b", "tie"]


def test_export_jsonl_round_trips_vietnamese(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    store.add(make_vote("b1"))
    store.add(make_vote("b2", "both_bad"))
    out = tmp_path / "out" / "votes.jsonl"
    assert store.export_jsonl(out) == 2
    text = out.read_text(encoding="utf-8")
    assert "Hà Nội" in text  # not \u-escaped
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["vote"] for r in rows] == ["a", "both_bad"]
    assert rows[0]["turns"][0]["prompt"] == "Xin chào"
    assert rows[0]["voted_at_iso"].startswith("1970-01-01T00:00:02")


def test_concurrent_writers_lose_nothing(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    errors = []

    def writer(k):
        try:
            for n in range(25):
                store.add(make_vote(f"t{k}-{n}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count() == 200


def test_salt_from_env_or_persisted_file(tmp_path):
    db = tmp_path / "data" / "votes.sqlite"
    assert load_or_create_salt(db, "from-env") == "from-env"
    assert not (db.parent / SALT_FILE).exists()
    first = load_or_create_salt(db)
    assert len(first) == 64
    assert (db.parent / SALT_FILE).stat().st_mode & 0o777 == 0o600
    assert load_or_create_salt(db) == first  # stable across restarts


def test_session_hash_is_salted_and_stable():
    h1, h2 = SessionHasher("salt-1"), SessionHasher("salt-2")
    assert h1("sess") == h1("sess") != h1("other")
    assert h1("sess") != h2("sess")
    assert "sess" not in h1("sess") and len(h1("sess")) == 32
    assert "salt" not in repr(h1).replace("salt hidden", "")


def test_battle_store_rules():
    store = BattleStore()
    d = Decoding()
    battle = store.create("anonymous", ("x", "y"), ("chat", "chat"), (d, d), "s1")
    assert store.get(battle.id, "s1") is battle
    assert store.get(battle.id, "someone-else") is None  # a battle belongs to its session
    with pytest.raises(BattleError, match="Chưa có câu hỏi"):
        store.claim_vote(battle, "a")
    store.begin_turn(battle)
    with pytest.raises(BattleError):
        store.begin_turn(battle)  # already streaming
    with pytest.raises(BattleError, match="đợi"):
        store.claim_vote(battle, "a")
    store.end_turn(battle, ("hỏi", "đáp A", "đáp B"))
    store.claim_vote(battle, "tie")
    with pytest.raises(BattleError, match="một phiếu"):
        store.claim_vote(battle, "a")
    assert battle.vote == "tie"
    assert store.latest("s1") is battle


def test_battle_store_forgets_old_battles():
    store = BattleStore(ttl_s=0.0, max_battles=10)
    d = Decoding()
    old = store.create("anonymous", ("x", "y"), (None, None), (d, d), "s")
    store.create("anonymous", ("x", "y"), (None, None), (d, d), "s")
    assert store.get(old.id, "s") is None


def test_claims_are_atomic_under_threads():
    store = BattleStore()
    d = Decoding()
    battle = store.create("anonymous", ("x", "y"), (None, None), (d, d), "s")
    store.begin_turn(battle)
    store.end_turn(battle, ("q", "a", "b"))
    wins = []

    def claim(choice):
        try:
            store.claim_vote(battle, choice)
            wins.append(choice)
        except BattleError:
            pass

    threads = [threading.Thread(target=claim, args=(c,)) for c in ["a", "b", "tie", "both_bad"] * 5]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
