"""Battles in progress, held on the server and keyed by battle id.

The page only ever holds a battle id (in ``gr.State``, which itself lives on the server): which
models fight, on which side, and whether the battle was voted are decided here, so a client cannot
pick its opponents, see the names early, or vote twice. Claiming a vote is atomic under a lock;
the database's UNIQUE battle id backs it up across restarts.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from ..records import VichatError
from ..specs import Decoding

ThreeWay = tuple[str, str, str]  # (prompt, answer_a, answer_b)


class BattleError(VichatError):
    """An action the battle's state does not allow; the message is for the visitor."""


@dataclass
class Battle:
    """One battle: ``models[0]`` is side A (left), ``models[1]`` side B (right)."""

    id: str
    mode: str
    models: tuple[str, str]
    templates: tuple[str | None, str | None]
    decodings: tuple[Decoding, Decoding]
    session: str
    started_at: float
    turns: list[ThreeWay] = field(default_factory=list)
    busy: bool = False
    vote: str | None = None
    error: str | None = None
    unvotable: str | None = None  # why the last turn cannot be voted on (stopped too early)
    touched: float = field(default_factory=time.monotonic)

    @property
    def open(self) -> bool:
        """Still accepting messages: not voted and no side failed."""
        return self.vote is None and self.error is None


class BattleStore:
    """Battles by id, forgotten ``ttl_s`` seconds after their last use (memory stays bounded)."""

    def __init__(self, ttl_s: float = 3600.0, max_battles: int = 20_000) -> None:
        self.ttl_s = ttl_s
        self.max_battles = max_battles
        self._battles: dict[str, Battle] = {}
        self._latest: dict[str, str] = {}  # session -> its most recent battle id
        self._lock = threading.Lock()

    def create(
        self, mode: str, models: tuple[str, str], templates: tuple[str | None, str | None],
        decodings: tuple[Decoding, Decoding], session: str,
    ) -> Battle:
        battle = Battle(
            id=secrets.token_hex(8), mode=mode, models=models, templates=templates, decodings=decodings,
            session=session, started_at=time.time(),
        )
        with self._lock:
            self._expire()
            self._battles[battle.id] = battle
            self._latest[session] = battle.id
        return battle

    def _expire(self) -> None:
        now = time.monotonic()
        stale = [k for k, b in self._battles.items() if now - b.touched > self.ttl_s and not b.busy]
        overflow = len(self._battles) - len(stale) - self.max_battles + 1
        if overflow > 0:  # oldest first, never one that is streaming
            idle = sorted((b for b in self._battles.values() if not b.busy and b.id not in stale), key=lambda b: b.touched)
            stale += [b.id for b in idle[:overflow]]
        for k in stale:
            battle = self._battles.pop(k)
            if self._latest.get(battle.session) == k:
                del self._latest[battle.session]

    def get(self, battle_id: str | None, session: str) -> Battle | None:
        """The battle, if it exists, belongs to ``session`` and has not expired."""
        with self._lock:
            battle = self._battles.get(battle_id or "")
            if battle is None or battle.session != session:
                return None
            battle.touched = time.monotonic()
            return battle

    def latest(self, session: str) -> Battle | None:
        """The session's most recent battle (the Scoring tab's "take from the current battle")."""
        with self._lock:
            battle_id = self._latest.get(session)
            return self._battles.get(battle_id) if battle_id else None

    def begin_turn(self, battle: Battle) -> None:
        """Mark ``battle`` as streaming; refuse if it is voted, failed or already streaming."""
        with self._lock:
            if battle.vote is not None:
                raise BattleError("Trận này đã được bầu chọn. Gửi tin nhắn mới để bắt đầu trận mới.")
            if battle.error is not None:
                raise BattleError("Trận này đã gặp lỗi. Bấm “Trận mới” để bắt đầu lại.")
            if battle.busy:
                raise BattleError("Hai mô hình vẫn đang trả lời; hãy đợi hoặc bấm “Dừng”.")
            battle.busy = True
            battle.touched = time.monotonic()

    def end_turn(self, battle: Battle, turn: ThreeWay | None, error: str | None = None,
                 unvotable: str | None = None) -> None:
        """Record a finished turn (``None`` when stopped before any text) or the error that ended it;
        ``unvotable`` says why this turn cannot be voted on (``None``: it can)."""
        with self._lock:
            battle.unvotable = unvotable
            if turn is not None:
                battle.turns.append(turn)
            if error is not None:
                battle.error = error
            battle.busy = False
            battle.touched = time.monotonic()

    def claim_vote(self, battle: Battle, choice: str) -> None:
        """Atomically mark ``battle`` voted with ``choice``, or raise :class:`BattleError` saying why not."""
        with self._lock:
            if battle.vote is not None:
                raise BattleError("Bạn đã bầu chọn cho trận này rồi: mỗi trận chỉ nhận một phiếu.")
            if battle.busy:
                raise BattleError("Hãy đợi cả hai mô hình trả lời xong rồi mới bầu chọn.")
            if battle.error is not None:
                raise BattleError("Trận này gặp lỗi nên không thể bầu chọn. Bấm “Trận mới”.")
            if not battle.turns:
                raise BattleError("Chưa có câu hỏi nào trong trận này; hãy gửi một câu hỏi trước.")
            if battle.unvotable:
                raise BattleError(battle.unvotable)
            battle.vote = choice
            battle.touched = time.monotonic()

    def release_vote(self, battle: Battle) -> None:
        """Undo :meth:`claim_vote` when storing the vote failed, so the visitor can try again."""
        with self._lock:
            battle.vote = None
