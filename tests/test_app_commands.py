"""`vichat serve`, `vichat arena export|leaderboard` and spaces_app.py, without a browser."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from click.testing import CliRunner

from vichat.app.commands import arena, export_votes, serve
from vichat.arena.votes import VoteStore
from test_arena_votes import make_vote

REPO = Path(__file__).resolve().parents[1]


def filled_db(tmp_path: Path) -> Path:
    db = tmp_path / "votes.sqlite"
    store = VoteStore(db)
    for k, (a, b, v) in enumerate([("x", "y", "a")] * 3 + [("x", "y", "b"), ("x", "y", "both_bad")]):
        store.add(make_vote(f"b{k}", v, model_a=a, model_b=b))
    store.add(make_vote("n1", "a", mode="named", model_a="y", model_b="x"))
    return db


def test_arena_export_writes_jsonl(tmp_path):
    db = filled_db(tmp_path)
    out = tmp_path / "votes.jsonl"
    result = CliRunner().invoke(arena, ["export", "--db", str(db), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 and rows[-1]["mode"] == "named"
    assert export_votes(db, tmp_path / "again.jsonl") == 6
    stdout = CliRunner().invoke(arena, ["export", "--db", str(db)])
    assert len(stdout.output.splitlines()) == 6


def test_arena_leaderboard_text_and_json(tmp_path):
    db = filled_db(tmp_path)
    result = CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--json", "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.output)}
    assert rows["x"]["wins"] == 3 and rows["x"]["both_bad"] == 1 and rows["x"]["battles"] == 5
    named = json.loads(CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--json", "--include-named",
                                                  "--bootstrap", "0"]).output)
    assert {r["model"]: r for r in named}["x"]["battles"] == 6
    text = CliRunner().invoke(arena, ["leaderboard", "--db", str(db), "--bootstrap", "50"]).output
    assert "x" in text and "95% CI" in text
    missing = CliRunner().invoke(arena, ["leaderboard", "--db", str(tmp_path / "none.sqlite")])
    assert missing.exit_code != 0 and "no votes database" in missing.output


def test_serve_builds_the_app_from_flags(tmp_path, monkeypatch):
    launched = {}

    def fake_launch(demo, host=None, port=None, **kwargs):
        launched.update(demo=demo, host=host, port=port)

    monkeypatch.setattr("vichat.app.app.launch", fake_launch)
    db = tmp_path / "data" / "votes.sqlite"
    result = CliRunner().invoke(serve, ["--fake", "--votes-db", str(db), "--port", "7999", "--host", "127.0.0.1",
                                        "--reports", str(tmp_path), "--concurrency", "3"])
    assert result.exit_code == 0, result.output
    ctx = launched["demo"].vichat
    assert launched["port"] == 7999 and launched["host"] == "127.0.0.1"
    assert ctx.settings.votes_db == db and db.exists() and (db.parent / "session-salt").exists()
    assert ctx.settings.generation_concurrency == 3 and ctx.settings.report_dirs == (tmp_path,)
    assert "bloomz-chat" in ctx.model_names


def test_spaces_app_builds_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VICHAT_FAKE_BACKEND", "1")
    monkeypatch.setenv("VICHAT_VOTES_DB", str(tmp_path / "space" / "votes.sqlite"))
    monkeypatch.setenv("VICHAT_SESSION_SALT", "space-salt")
    monkeypatch.setenv("VICHAT_MAX_TURNS", "5")
    namespace = runpy.run_path(str(REPO / "spaces_app.py"), run_name="spaces_app")  # not __main__: no launch
    demo = namespace["demo"]
    assert demo.vichat.settings.max_turns == 5
    assert demo.vichat.settings.votes_db == tmp_path / "space" / "votes.sqlite"
    assert not (tmp_path / "space" / "session-salt").exists()  # the env salt is used, nothing written
    config = demo.get_config_file()
    assert any(d.get("api_name") == "battle_send" for d in config["dependencies"])


def test_a_bad_models_configuration(tmp_path, monkeypatch):
    from vichat.serve import ConfigError

    bad = tmp_path / "models.yaml"
    bad.write_text("backends:\n  - base_url: ftp://nowhere\n    models: [{name: x}]\n", encoding="utf-8")
    # `vichat serve` stops with the configuration's own message (the CLI prints it as `error: ...`).
    result = CliRunner().invoke(serve, ["--config", str(bad), "--votes-db", str(tmp_path / "v.sqlite")])
    assert isinstance(result.exception, ConfigError) and "models.yaml:2" in str(result.exception)
    # The Space stays up and says why.
    monkeypatch.setenv("VICHAT_MODELS_CONFIG", str(bad))
    monkeypatch.setenv("VICHAT_VOTES_DB", str(tmp_path / "space.sqlite"))
    monkeypatch.delenv("VICHAT_FAKE_BACKEND", raising=False)
    demo = runpy.run_path(str(REPO / "spaces_app.py"), run_name="spaces_app")["demo"]
    assert demo.vichat.model_names == []
    assert "models.yaml:2" in demo.vichat_preparer.status()
