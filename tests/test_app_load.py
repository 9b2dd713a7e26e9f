"""Load: 20 concurrent gradio_client sessions chat, fight battles and vote for a bounded time;
every accepted vote is in the database exactly once and the app still answers."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
from app_support import BATTLE_ID, running_app, test_settings, text_of, votes_in
from gradio_client import Client

from vichat.app.fake import CannedBackend

CLIENTS = 20
SECONDS = 15.0
CHOICES = ("a", "b", "tie", "both_bad")
HTTP_TIMEOUT_S = 300.0

pytestmark = pytest.mark.slow


def visitor(url: str, k: int, deadline: float, accepted: list, errors: list, chats: Counter) -> None:
    rnd = random.Random(k)

    def chat(n: int) -> None:
        history, _ = client.predict(f"Khách {k} hỏi lần {n}", [], "bloomz-chat", "chat", 24, 0.5, 20, 1.0, 1.2,
                                    api_name="/chat")
        assert text_of(history)[1].startswith("Xin chào!")  # the canned answer of the first model
        chats[k] += 1

    def battle_and_vote(n: int) -> None:
        client.predict(f"Khách {k}, trận {n}: món ăn nào ngon?", api_name="/battle_send")
        choice = rnd.choice(CHOICES)
        status = client.predict(api_name=f"/battle_vote_{choice}")[2]
        match = BATTLE_ID.search(status)
        assert match, status
        accepted.append((match.group(1), choice))
        if rnd.random() < 0.3:  # a visitor clicking twice must not add a second vote
            again = client.predict(api_name="/battle_vote_a")[2]
            assert "một phiếu" in again, again

    try:
        # Generous HTTP timeouts: on a loaded 2-core machine a request can wait long for a core, and
        # httpx's 5 s default turned that wait into ReadTimeouts that said nothing about the app.
        client = Client(url, verbose=False, httpx_kwargs={"timeout": HTTP_TIMEOUT_S})
        chat(0)  # every visitor does both at least once, however slow the machine is
        battle_and_vote(0)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            chat(n) if n % 3 == 0 else battle_and_vote(n)
    except Exception as exc:  # noqa: BLE001 - collected and reported by the test
        errors.append(f"client {k}: {type(exc).__name__}: {exc}")


def test_twenty_clients_chat_and_vote(tmp_path):
    # max_words keeps answers short so many rounds fit in the time box on two cores.
    backend = CannedBackend(delay_s=0.01, max_words=15)
    settings = test_settings(tmp_path, generation_concurrency=8)
    with running_app(backend, settings) as (demo, url):
        accepted: list = []
        errors: list = []
        chats: Counter = Counter()
        deadline = time.monotonic() + SECONDS
        threads = [threading.Thread(target=visitor, args=(url, k, deadline, accepted, errors, chats))
                   for k in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 2 * HTTP_TIMEOUT_S)
        elapsed = time.monotonic() - t0
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert not errors, errors[:5]

        rows = votes_in(settings.votes_db)
        stored = {r["battle_id"]: r["vote"] for r in rows}
        assert len(rows) == len(stored) == len(accepted)  # none lost, none doubled
        assert stored == dict(accepted)
        assert len(accepted) >= CLIENTS  # every visitor voted at least once
        assert len(chats) == CLIENTS

        # Still answering, and the leaderboard agrees with the database.
        table, summary = Client(url, verbose=False, httpx_kwargs={"timeout": HTTP_TIMEOUT_S}).predict(
            False, api_name="/leaderboard")
        battles = sum(r[table["headers"].index("Số trận")] for r in table["data"])
        assert battles == 2 * len(rows)
        print(f"\n{len(rows)} votes and {sum(chats.values())} chats from {CLIENTS} clients in {elapsed:.1f}s")
