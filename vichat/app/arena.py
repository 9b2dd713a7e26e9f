"""The Arena tab: blind battles between two random models, and a named side-by-side mode.

Both sides stream at the same time (:func:`vichat.app.generation.stream_pair`). A vote is one of
A better, B better, tie, both bad; it is accepted once per battle, checked on the server, and the
model names are revealed only after it. Endpoints (``api_name``): ``battle_send``,
``battle_vote_{a,b,tie,both_bad}``, ``battle_new``, ``battle_stop`` and the same with ``sbs_``
for the named mode (whose send also takes the two model names).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import gradio as gr

from ..records import VichatError
from ..arena.battles import Battle, BattleError
from .context import AppContext
from .controls import refuse_bad_values
from .generation import STOPS, SideRequest, shown, stream_pair
from .messages import to_messages
from .safety import HIDDEN_DETAIL, LimitError, check_message, check_turns, describe_error, refuse, scrub
from ..arena.votes import DuplicateVoteError, Vote, now

log = logging.getLogger("vichat.app")

VOTE_LABELS = {
    "a": "👈 A tốt hơn",
    "b": "👉 B tốt hơn",
    "tie": "🤝 Hòa",
    "both_bad": "👎 Cả hai đều kém",
}
INTRO = {
    "anonymous": "Hai mô hình ẩn danh sẽ cùng trả lời câu hỏi của bạn. Hãy bầu chọn câu trả lời tốt hơn; "
                 "tên mô hình chỉ hiện ra sau khi bạn bầu.",
    "named": "Chọn hai mô hình, đặt câu hỏi và so sánh câu trả lời của chúng cạnh nhau.",
}
SIDES = ("A", "B")
PRIVACY = ("Phiếu bầu cùng câu hỏi và câu trả lời được lưu lại cho nghiên cứu và có thể được công bố; "
           "đừng nhập thông tin cá nhân.")


@dataclass
class Panel:
    """The components of one battle panel (anonymous or named)."""

    battle_id: Any
    chat_a: Any
    chat_b: Any
    status: Any
    box: Any
    votes: dict[str, Any]
    model_a: Any = None
    model_b: Any = None

    def view_outputs(self) -> list[Any]:
        return [self.battle_id, self.chat_a, self.chat_b, self.status, self.box, *self.votes.values()]

    def vote_outputs(self) -> list[Any]:
        return [self.chat_a, self.chat_b, self.status, *self.votes.values()]


class ArenaHandlers:
    """Event handlers for one mode; plain methods so tests can call them directly."""

    def __init__(self, ctx: AppContext, mode: str, rng: random.Random | None = None) -> None:
        self.ctx = ctx
        self.mode = mode
        self.rng = rng or random.SystemRandom()

    # -- views --------------------------------------------------------------------------------
    def _labels(self, battle: Battle | None) -> tuple[str, str]:
        if battle is not None and (self.mode == "named" or battle.vote is not None):
            return f"A · {battle.models[0]}", f"B · {battle.models[1]}"
        return "Mô hình A", "Mô hình B"

    def _view(self, battle: Battle | None, pending: tuple[str, str, str] | None, status: str, box: str = "",
              votable: bool = False) -> list[Any]:
        turns = list(battle.turns) if battle else []
        side_a = [(p, a) for p, a, _ in turns]
        side_b = [(p, b) for p, _, b in turns]
        msgs_a = to_messages(side_a, pending[0], pending[1]) if pending else to_messages(side_a)
        msgs_b = to_messages(side_b, pending[0], pending[2]) if pending else to_messages(side_b)
        label_a, label_b = self._labels(battle)
        buttons = [gr.update(interactive=votable) for _ in VOTE_LABELS]
        return [battle.id if battle else "", gr.update(value=msgs_a, label=label_a),
                gr.update(value=msgs_b, label=label_b), status, box, *buttons]

    def _blind(self, battle: Battle) -> bool:
        """Whether the visitor must not learn which model is on which side yet."""
        return self.mode == "anonymous" and battle.vote is None

    def _anonymise(self, text: str, battle: Battle) -> str:
        """Model names in ``text`` replaced by "mô hình A/B" while the battle is blind."""
        return anonymise(text, battle.models) if self._blind(battle) else text

    def _failure(self, battle: Battle, errors: list[str | None]) -> str:
        """What the visitor reads when a side failed. Blind, it says only which side failed: an error's
        details (a server URL or port, an adapter path, a configuration file and line, a remote's
        model name) would tell which model is on which side, and expose a public Space's hosts
        and files. The full errors are in the log; the named mode shows them, as the Chat tab does,
        unless the app hides failures' details (``error_detail`` off, as on a Space)."""
        failed = [side for side, e in zip(SIDES, errors) if e]
        if self._blind(battle):
            who = "Cả hai mô hình" if len(failed) == 2 else f"Mô hình {failed[0] if failed else 'A'}"
            return f"{who} gặp lỗi; hãy thử lại. Trận này không thể bầu chọn; bấm “Trận mới” để bắt đầu trận khác."
        detail = battle.error if self.ctx.settings.error_detail else HIDDEN_DETAIL
        return f"Mô hình gặp lỗi ({detail}). Trận này không thể bầu chọn; bấm “Trận mới” để thử lại."

    # -- battles -------------------------------------------------------------------------------
    def _new_battle(self, session: str, model_a: str | None, model_b: str | None) -> Battle:
        names = self.ctx.model_names
        if self.mode == "anonymous":
            if len(names) < 2:
                raise LimitError("Đấu trường cần ít nhất hai mô hình; bản demo này chỉ có "
                                 f"{len(names)}.")
            pair = tuple(self.rng.sample(names, 2))  # a random pair in a random order: sides are random too
        else:
            self._check_pair(model_a, model_b)
            pair = (model_a, model_b)
        infos = [self.ctx.model(n) for n in pair]
        return self.ctx.battles.create(
            self.mode, pair, (infos[0].template, infos[1].template), (infos[0].decoding, infos[1].decoding), session
        )

    def _check_pair(self, model_a: str | None, model_b: str | None) -> None:
        if not model_a or not model_b:
            raise LimitError("Hãy chọn hai mô hình để so sánh.")
        if model_a == model_b:
            raise LimitError("Hãy chọn hai mô hình khác nhau.")
        for name in (model_a, model_b):
            if self.ctx.model(name) is None:
                raise LimitError(f"Không có mô hình {str(name)[:80]!r}.")

    def send_anonymous(self, message: str, battle_id: str, request: gr.Request = None) -> Iterator[list[Any]]:
        """Start or continue a blind battle with ``message``."""
        yield from self.send(message, battle_id, None, None, request)

    def send_named(self, message: str, battle_id: str, model_a: str, model_b: str,
                   request: gr.Request = None) -> Iterator[list[Any]]:
        """Start or continue a side-by-side battle between ``model_a`` and ``model_b``."""
        yield from self.send(message, battle_id, model_a, model_b, request)

    def send(self, message: str, battle_id: str, model_a: str | None, model_b: str | None,
             request: Any) -> Iterator[list[Any]]:
        """Start or continue a battle with ``message``; both answers stream at once. (Not an event
        handler itself: Gradio injects the request by position, so each mode has its own.)

        Order matters: the input and the rate are checked before a battle is created, so refused
        sends store nothing (they would otherwise evict other visitors' unvoted battles)."""
        try:
            text = check_message(message, self.ctx.settings.max_input_chars)
            visitor = self.ctx.visitor(request)
            session = visitor.session
            battle = self.ctx.battles.get(battle_id, session)
            fresh = (battle is None or not battle.open
                     or (self.mode == "named" and battle.models != (model_a, model_b)))
            if not fresh:
                check_turns(len(battle.turns), self.ctx.settings.max_turns)
                if battle.busy:
                    raise BattleError("Hai mô hình vẫn đang trả lời; hãy đợi hoặc bấm “Dừng”.")
            elif self.mode == "named":
                self._check_pair(model_a, model_b)
            elif len(self.ctx.model_names) < 2:
                raise LimitError("Đấu trường cần ít nhất hai mô hình; bản demo này chỉ có "
                                 f"{len(self.ctx.model_names)}.")
            self.ctx.limit("message", visitor)
            if fresh:
                battle = self._new_battle(session, model_a, model_b)
            self.ctx.battles.begin_turn(battle)
        except VichatError as exc:
            raise refuse(exc, f"battle_send ({self.mode})") from None
        yield from self._stream(session, battle, text)

    def _stream(self, session: str, battle: Battle, text: str) -> Iterator[list[Any]]:
        sides = tuple(
            SideRequest(model, text, tuple((t[0], t[1 + k]) for t in battle.turns), battle.templates[k],
                        battle.decodings[k])
            for k, model in enumerate(battle.models)
        )
        key = f"{session}:arena:{self.mode}"
        stop = STOPS.start(key)
        answers, errors, stopped, done = ["", ""], [None, None], False, [False, False]
        yield self._view(battle, (text, "", ""), "⏳ Hai mô hình đang trả lời…")
        try:
            for states in stream_pair(sides, key):  # type: ignore[arg-type]
                for k, state in enumerate(states):
                    answers[k] = state.text  # what is kept: never the waiting text
                    done[k] = state.done
                    if state.error is not None and errors[k] is None:
                        errors[k] = describe_error(state.error)
                # A side waiting for a place in its engine's batch shows its own place in the queue.
                # That names no model: it says no more than the visible delay before the side starts.
                yield self._view(battle, (text, *(shown(s) for s in states)), "⏳ Hai mô hình đang trả lời…")
        except Exception as exc:  # noqa: BLE001 - the page shows it; the app stays up
            errors[0] = errors[0] or describe_error(exc)
        finally:
            stopped = stop.is_set()  # before finish(), which sets it
            failed = [f"{side}: {e}" for side, e in zip(SIDES, errors) if e]
            turn = (text, answers[0], answers[1]) if any(answers) else None
            self.ctx.battles.end_turn(battle, turn, "; ".join(failed) if failed else None,
                                      self._unvotable(answers, done))
            STOPS.finish(key, stop)
        if battle.error:
            for side, model, error in zip(SIDES, battle.models, errors):
                if error:  # the whole error, for the operator: the page may not show it (see _failure)
                    log.warning("battle %s (%s): side %s, model %r failed: %s", battle.id, self.mode, side, model,
                                error)
            message = self._anonymise(self._failure(battle, errors), battle)
            gr.Warning(message)
            yield self._view(battle, None, "⚠️ " + message)
            return
        if battle.unvotable:
            status = f"⏹ {battle.unvotable}"
        elif stopped:
            status = "⏹ Đã dừng. Bạn vẫn có thể bầu chọn dựa trên phần đã trả lời, hoặc hỏi tiếp."
        else:
            status = "✅ Cả hai đã trả lời. Câu trả lời nào tốt hơn? Bầu chọn bên dưới, hoặc hỏi tiếp để so sánh thêm."
        yield self._view(battle, None, status, votable=bool(battle.turns) and not battle.unvotable)

    def _unvotable(self, answers: list[str], done: list[bool]) -> str | None:
        """Why this turn cannot be voted on: a side stopped before finishing with fewer than
        ``min_answer_chars`` characters (a vote must rest on real answers, and stopping at the
        first token must not make votes cheap)."""
        minimum = self.ctx.settings.min_answer_chars
        if all(d or len(a.strip()) >= minimum for a, d in zip(answers, done)):
            return None
        return (f"Không thể bầu chọn lượt này: câu trả lời bị dừng trước khi xong và ngắn hơn {minimum} ký tự. "
                "Hãy hỏi tiếp (và để hai mô hình trả lời xong) hoặc bấm “Trận mới”.")

    # -- votes ---------------------------------------------------------------------------------
    def vote(self, choice: str, battle_id: str, request: gr.Request = None) -> list[Any]:
        """Record ``choice`` for the session's battle, once; then reveal the names."""
        try:
            visitor = self.ctx.visitor(request)
        except VichatError as exc:
            refuse(exc, f"vote ({self.mode})")  # the log line; the page gets the message in the status
            return self._vote_view(None, f"⚠️ {scrub(str(exc))}")
        session = visitor.session
        battle = self.ctx.battles.get(battle_id, session)
        if battle is None:
            return self._vote_view(None, "⚠️ Không tìm thấy trận đấu (có thể đã hết hạn). Hãy bắt đầu trận mới.")
        try:
            self.ctx.battles.claim_vote(battle, choice)
        except BattleError as exc:
            gr.Warning(str(exc))
            return self._vote_view(battle, f"⚠️ {exc}")
        try:
            self.ctx.limit("vote", visitor)
        except LimitError as exc:
            self.ctx.battles.release_vote(battle)
            log.info("refused vote: %s", exc)
            gr.Warning(str(exc))
            return self._vote_view(battle, f"⚠️ {exc}", votable=True)
        try:
            self.ctx.votes.add(self._record(battle, choice, visitor))
        except DuplicateVoteError:
            message = "Trận này đã có phiếu bầu; mỗi trận chỉ nhận một phiếu."
            gr.Warning(message)
            return self._vote_view(battle, f"⚠️ {message}")
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: say so, let the visitor retry
            self.ctx.battles.release_vote(battle)
            raise gr.Error(f"Không lưu được phiếu bầu: {describe_error(exc)}") from None
        a, b = battle.models
        return self._vote_view(
            battle,
            f"🗳️ Đã ghi nhận phiếu: **{VOTE_LABELS[choice]}**. Mô hình A là **{a}**, mô hình B là **{b}**. "
            f"Gửi câu hỏi mới để bắt đầu trận tiếp theo. <small>(mã trận {battle.id})</small>",
        )

    def _record(self, battle: Battle, choice: str, visitor: Any) -> Vote:
        *earlier, last = battle.turns
        return Vote(
            battle_id=battle.id, mode=self.mode, model_a=battle.models[0], model_b=battle.models[1], vote=choice,
            prompt=last[0], answer_a=last[1], answer_b=last[2],
            turns=[{"prompt": p, "answer_a": a, "answer_b": b} for p, a, b in earlier],
            decoding={"a": {**asdict(battle.decodings[0]), "template": battle.templates[0]},
                      "b": {**asdict(battle.decodings[1]), "template": battle.templates[1]}},
            session=visitor.session, started_at=battle.started_at, voted_at=now(), app_version=self.ctx.version,
            address=visitor.address,
        )

    def _vote_view(self, battle: Battle | None, status: str, votable: bool = False) -> list[Any]:
        label_a, label_b = self._labels(battle)
        return [gr.update(label=label_a), gr.update(label=label_b), status,
                *[gr.update(interactive=votable) for _ in VOTE_LABELS]]

    def new(self, request: gr.Request = None) -> list[Any]:
        """Forget the current battle (the next message starts a new one)."""
        self.stop(request)
        return self._view(None, None, INTRO[self.mode])

    def stop(self, request: gr.Request = None) -> None:
        try:
            STOPS.stop(f"{self.ctx.session(request)}:arena:{self.mode}")
        except VichatError:
            pass  # no session could be issued: nothing of this visitor is running


def anonymise(text: str, models: tuple[str, ...] | list[str]) -> str:
    """``text`` with each of ``models`` (side A first) replaced by "mô hình A", "mô hình B", ...:
    whole names only (not inside a longer name or word: with ``tiny`` and ``tiny-chat`` in one
    battle, "tiny-chat" is B's name, not A's followed by "-chat"), longest first, in one pass."""
    names = {name: f"mô hình {SIDES[k] if k < len(SIDES) else k + 1}" for k, name in enumerate(models) if name}
    if not names:
        return text
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])(?:{pattern})(?![\w-]|\.\w)", lambda m: names[m.group(0)], text)


def build_battle_panel(ctx: AppContext, mode: str, rng: random.Random | None = None) -> tuple[ArenaHandlers, Panel]:
    """One arena panel inside the caller's layout; ``mode`` is ``anonymous`` or ``named``."""
    h = ArenaHandlers(ctx, mode, rng)
    prefix = "battle" if mode == "anonymous" else "sbs"
    gr.Markdown(f"{INTRO[mode]}\n\n<small>{PRIVACY}</small>")
    model_a = model_b = None
    if mode == "named":
        names = ctx.model_names
        with gr.Row():
            model_a = gr.Dropdown(names, value=names[0] if names else None, label="Mô hình A", elem_id=f"{prefix}-model-a")
            model_b = gr.Dropdown(names, value=names[1] if len(names) > 1 else None, label="Mô hình B",
                                  elem_id=f"{prefix}-model-b")
        refuse_bad_values([model_a, model_b], f"{prefix}_send")
    battle_id = gr.State("")
    with gr.Row(equal_height=True):
        chat_a = gr.Chatbot(label="Mô hình A", height=380, elem_id=f"{prefix}-a", feedback_options=None,
                            buttons=["copy"])
        chat_b = gr.Chatbot(label="Mô hình B", height=380, elem_id=f"{prefix}-b", feedback_options=None,
                            buttons=["copy"])
    status = gr.Markdown(INTRO[mode] if mode == "anonymous" else "", elem_id=f"{prefix}-status")
    with gr.Row():
        votes = {c: gr.Button(label, interactive=False, elem_id=f"{prefix}-vote-{c}") for c, label in VOTE_LABELS.items()}
    with gr.Row():
        box = gr.Textbox(placeholder="Nhập câu hỏi cho cả hai mô hình rồi nhấn Enter…", show_label=False, scale=5,
                         max_lines=8, elem_id=f"{prefix}-input", max_length=ctx.settings.max_input_chars)
        send = gr.Button("Gửi", variant="primary", scale=1, elem_id=f"{prefix}-send")
    with gr.Row():
        stop = gr.Button("⏹ Dừng", elem_id=f"{prefix}-stop")
        new = gr.Button("🆕 Trận mới", elem_id=f"{prefix}-new")
    panel = Panel(battle_id, chat_a, chat_b, status, box, votes, model_a, model_b)

    inputs = [box, battle_id] + ([model_a, model_b] if mode == "named" else [])
    handler = h.send_anonymous if mode == "anonymous" else h.send_named
    sent = gr.on([box.submit, send.click], handler, inputs, panel.view_outputs(), api_name=f"{prefix}_send",
                 concurrency_limit=ctx.settings.generation_concurrency, concurrency_id="generate")
    for choice, button in votes.items():
        button.click(_voter(h, choice), [battle_id], panel.vote_outputs(), api_name=f"{prefix}_vote_{choice}",
                     concurrency_limit=ctx.settings.default_concurrency, concurrency_id="votes")
    new.click(h.new, None, panel.view_outputs(), cancels=[sent], api_name=f"{prefix}_new", queue=False)
    # No `cancels` here: the stop signal ends both streams and the handler finishes normally, so the
    # visitor can still vote on what was answered (cancelling would leave the vote buttons disabled).
    stop.click(h.stop, None, None, api_name=f"{prefix}_stop", queue=False)
    return h, panel


def _voter(h: ArenaHandlers, choice: str):
    """A vote handler bound to ``choice`` with a plain signature Gradio can inspect."""

    def vote(battle_id: str, request: gr.Request) -> list[Any]:
        return h.vote(choice, battle_id, request)

    vote.__name__ = f"vote_{choice}"
    return vote
