"""Continuous batching: queue and limits, chunked prefill, GPT-J positions, and sampling as `generate` does."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from serve_helpers import local_config, tiny_bloom, tokenizer
from vichat.data.templates import CHAT
from vichat.data.tokenize import encode_text
from vichat.serve.api import Queued
from vichat.serve.config import ModelConfig
from vichat.serve.engine import LocalEngine
from vichat.serve.history import fold_history, stop_markers
from vichat.serve.sampling import logits_processors
from vichat.serve.text import final_text
from vichat.specs import Decoding

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage

GREEDY = Decoding(max_new_tokens=16, temperature=0)
QUESTIONS = ["Xin chào, bạn khỏe không?", "Tôi bị đau đầu và sốt nhẹ.", "Hà Nội ở đâu?", "Kể một câu chuyện ngắn."]


def generate_alone(engine: LocalEngine, adapter: str | None, message: str, dec: Decoding) -> str:
    """transformers' ``generate`` on one prompt, under one adapter (``None``: the bare base)."""
    loaded = engine.prepare()
    model, tok, runner = engine.model, loaded.tokenizer.tokenizer, loaded.scheduler.runner
    ids = encode_text(tok, fold_history(CHAT, message))
    kwargs = {"adapter_names": [adapter or "__base__"]} if hasattr(model, "peft_config") else {}
    with runner.lock, torch.no_grad():
        runner.reset()  # adapter layers on: generate picks the adapter with adapter_names
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             pad_token_id=tok.pad_token_id, **dec.as_generate_kwargs(), **kwargs)
    return final_text(tok.decode(out[0, len(ids):], skip_special_tokens=True), stop_markers(CHAT))


def run_together(engine: LocalEngine, jobs: list[tuple[str, str]], dec: Decoding) -> tuple[list[str], list[list]]:
    """Queue every job before the scheduler looks, drain them in threads: texts and stream items."""
    scheduler = engine.prepare().scheduler
    items: list[list] = [[] for _ in jobs]
    with scheduler._cond:
        streams = [engine.stream(model, message, decoding=dec) for model, message in jobs]

    def drain(i: int) -> None:
        items[i].extend(streams[i])

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ["".join(x) for x in items], items


def test_a_full_batch_queues_requests_and_tells_each_its_place():
    config = replace(local_config(tiny_bloom()), max_batch_size=2)
    e = LocalEngine(config, registry=REG)
    try:
        jobs = [("a", QUESTIONS[0]), ("b", QUESTIONS[1]), ("bare", QUESTIONS[2]), ("a", QUESTIONS[3])]
        texts, items = run_together(e, jobs, GREEDY)
        alone = ["".join(e.stream(m, q, decoding=GREEDY)) for m, q in jobs]
    finally:
        e.close()
    assert texts == alone
    places = [[x.position for x in its if isinstance(x, Queued)] for its in items]
    assert places[0] == [] and places[1] == []  # the first two fit in the batch
    assert places[2][0] == 1 and places[2][-1] == 0  # third: first in the queue, then started
    assert places[3][0] == 2 and places[3][-1] == 0  # fourth: second, then started
    assert places[3] == sorted(places[3], reverse=True)  # a place only ever improves
    assert all(isinstance(x, str) for its in items for x in its)  # a plain consumer just concatenates


def test_a_bug_in_the_loops_bookkeeping_fails_the_requests_in_flight_and_the_engine_keeps_serving(monkeypatch):
    from vichat.serve import scheduler as sched
    from vichat.serve.api import ModelError

    e = LocalEngine(local_config(tiny_bloom()), registry=REG)
    try:
        loop = e.prepare().scheduler
        solo = "".join(e.stream("a", QUESTIONS[0], decoding=GREEDY))
        real = sched.Scheduler._compact
        broken = {"left": 1}

        def compact_once_broken(self):  # noqa: ANN001, ANN202
            if broken["left"] and self._rows:
                broken["left"] -= 1
                raise IndexError("a bookkeeping bug")
            return real(self)

        monkeypatch.setattr(sched.Scheduler, "_compact", compact_once_broken)
        with pytest.raises(ModelError, match=r"generation failed: IndexError: a bookkeeping bug"):
            "".join(e.stream("b", QUESTIONS[1], decoding=GREEDY))
        assert loop._thread.is_alive() and loop.in_batch() == 0 and loop._cache is None
        assert "".join(e.stream("a", QUESTIONS[0], decoding=GREEDY)) == solo  # the next visitor is served
    finally:
        e.close()


def test_the_token_limit_bounds_the_batch():
    # Each request reserves its prompt + 16 new tokens: a limit below two of them runs one at a time.
    tok = tokenizer()
    one = len(encode_text(tok, fold_history(CHAT, QUESTIONS[0]))) + GREEDY.max_new_tokens
    e = LocalEngine(replace(local_config(tiny_bloom()), max_batch_tokens=one + 1), registry=REG)
    try:
        texts, items = run_together(e, [("a", QUESTIONS[0]), ("a", QUESTIONS[0])], GREEDY)
        assert texts[0] == texts[1] == "".join(e.stream("a", QUESTIONS[0], decoding=GREEDY))
        assert [x.position for x in items[1] if isinstance(x, Queued)] == [1, 0]
    finally:
        e.close()


def test_the_token_limit_counts_the_padded_cache_not_the_sum_of_the_requests():
    # One left-padded cache holds every row at the longest row's length: a long conversation next to
    # a short question costs 2 x the long one, so a limit between the sum and that runs them one by one.
    tok = tokenizer()
    long_q, short_q = " ".join([QUESTIONS[1]] * 6), QUESTIONS[2]
    long_n, short_n = (len(encode_text(tok, fold_history(CHAT, q))) + GREEDY.max_new_tokens for q in (long_q, short_q))
    assert 2 * long_n > long_n + short_n + 1
    e = LocalEngine(replace(local_config(tiny_bloom()), max_batch_tokens=long_n + short_n + 1), registry=REG)
    try:
        texts, items = run_together(e, [("a", long_q), ("bare", short_q)], GREEDY)  # both on the chat template
        assert [x.position for x in items[1] if isinstance(x, Queued)] == [1, 0]  # waited for the long one
        assert texts == ["".join(e.stream("a", long_q, decoding=GREEDY)),
                         "".join(e.stream("bare", short_q, decoding=GREEDY))]
        # Two rows of the short one's length fit the same limit together: nobody waits.
        texts, items = run_together(e, [("a", short_q), ("bare", short_q)], GREEDY)
        assert not any(isinstance(x, Queued) for its in items for x in its)
    finally:
        e.close()


def test_chunked_prefill_interleaves_with_decoding_and_changes_no_answer():
    e = LocalEngine(replace(local_config(tiny_bloom()), prefill_chunk=8), registry=REG)
    try:
        loaded = e.prepare()
        passes: list = []
        runner = loaded.scheduler.runner
        original = runner.forward

        def forward(ids, mask, cache, adapters):
            passes.append((ids.shape[1], tuple(adapters)))
            return original(ids, mask, cache, adapters)

        runner.forward = forward
        dec = Decoding(max_new_tokens=30, temperature=0)
        first = e.stream("a", "Chào", decoding=dec)
        head = next(first)  # "a" is decoding when the long prompt arrives
        long_q = "Hãy giải thích thật chi tiết vì sao bầu trời có màu xanh vào ban ngày " * 2
        second = "".join(e.stream("b", long_q, template="chat", decoding=GREEDY))
        rest = "".join(first)
        del runner.forward
        assert head + rest == generate_alone(e, "a", "Chào", dec)
        assert second == generate_alone(e, "b", long_q, GREEDY)
        # The long prompt went in chunks of 8, each followed by a decode step of "a" (1 token).
        chunks = [i for i, p in enumerate(passes) if p[1] == ("b",) and p[0] > 1]
        assert len(chunks) >= 3 and all(p[0] <= 8 for p in (passes[i] for i in chunks))
        assert all(passes[i + 1] == (1, ("a",)) for i in chunks[:-1])
    finally:
        e.close()


@pytest.fixture(scope="module")
def tiny_gptj():
    """GPT-J (rotary positions: needs position_ids with left padding) with two random adapters."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPTJConfig, GPTJForCausalLM

    tok = tokenizer()
    torch.manual_seed(0)
    config = GPTJConfig(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=512,
                        initializer_range=1.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    base = GPTJForCausalLM(config).eval()
    model: PeftModel | None = None
    for i, name in enumerate(("x", "y")):
        torch.manual_seed(10 + i)
        lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        if model is None:
            model = get_peft_model(base, lora, adapter_name=name)
        else:
            model.add_adapter(name, lora)
    model.eval()
    return model, tok


def test_gptj_mixed_adapters_with_left_padding_equal_solo_generate(tiny_gptj):
    model, tok = tiny_gptj
    models = [ModelConfig(name="x", adapter="x", template="chat"), ModelConfig(name="y", adapter="y", template="chat"),
              ModelConfig(name="plain", template="chat")]
    e = LocalEngine.from_loaded(model, tok, models, base="gptj-6b-vi")
    try:
        # Prompts of different lengths: the shorter ones are left-padded in the batch.
        jobs = [("x", QUESTIONS[0]), ("y", QUESTIONS[3]), ("plain", QUESTIONS[2])]
        texts, _ = run_together(e, jobs, GREEDY)
        expected = [generate_alone(e, None if m == "plain" else m, q, GREEDY) for m, q in jobs]
        # A request that joins a running batch: its cache is left-padded to the batch's length, so
        # only position_ids from the mask keep its rotary positions (and answers) right.
        longer = Decoding(max_new_tokens=30, temperature=0)
        first = e.stream("x", QUESTIONS[1], decoding=longer)
        head = next(first)
        joined = "".join(e.stream("y", QUESTIONS[2], decoding=GREEDY))
        rest = "".join(first)
        expected_join = generate_alone(e, "y", QUESTIONS[2], GREEDY), generate_alone(e, "x", QUESTIONS[1], longer)
    finally:
        e.close()
    assert texts == expected
    assert len(set(texts)) == 3
    assert (joined, head + rest) == expected_join


@pytest.mark.parametrize("dec", [Decoding(), Decoding(temperature=0), Decoding(temperature=1.3, top_k=0, top_p=0.7,
                                                                                 repetition_penalty=1.0)])
def test_the_engine_samples_with_the_processors_generate_builds(dec):
    from transformers import BloomForCausalLM

    model = BloomForCausalLM.from_pretrained(str(tiny_bloom().base)).eval()
    built = []
    original = model._get_logits_processor

    def spy(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    model._get_logits_processor = spy
    ids = torch.tensor([[5, 6, 7, 8]])
    kwargs = {**dec.as_generate_kwargs(), "max_new_tokens": 1}
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)
    torch.manual_seed(0)
    scores = torch.randn(1, model.config.vocab_size) * 3
    theirs = built[0](ids, scores.clone())
    ours = logits_processors(dec)(ids, scores.clone())
    assert [type(p).__name__ for p in logits_processors(dec)] == [type(p).__name__ for p in built[0]]
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    assert torch.allclose(ours[~torch.isinf(ours)], theirs[~torch.isinf(theirs)])


def test_the_chat_tab_shows_a_waiting_visitor_its_place_then_the_answer():
    from vichat.app import generation

    e = LocalEngine(replace(local_config(tiny_bloom()), max_batch_size=1), registry=REG)
    previous = generation._backend
    generation.set_backend(e)
    try:
        busy = e.stream("a", QUESTIONS[0], decoding=Decoding(max_new_tokens=40, temperature=0))
        next(busy)  # the only place in the batch is taken
        shown = list(generation.stream_answer("b", QUESTIONS[1], (), None, GREEDY))
        "".join(busy)
        alone = "".join(e.stream("b", QUESTIONS[1], decoding=GREEDY))
    finally:
        generation._backend = previous
        e.close()
    assert shown[0] == generation.waiting_text(1)
    assert "" in shown and shown[-1] == alone and alone  # the place is cleared, then the answer streams
    assert all(not s.startswith("⏳") for s in shown[shown.index(""):])


def test_each_side_of_a_battle_shows_its_place_in_the_queue_and_keeps_only_its_answer(tmp_path):
    """A blind battle sent while a long request fills the batch (one place): each side shows its own
    place, then its answer. The place is never kept: a battle stopped while both sides wait keeps
    no turn, and the answered turn, the history of the next turn and the stored vote hold only
    the answers, each equal to the model's answer alone."""
    import json
    import random

    from app_support import test_settings, votes_in

    from vichat.app import generation
    from vichat.app.arena import ArenaHandlers
    from vichat.app.context import AppContext
    from vichat.app.messages import shown_text

    cfg = local_config(tiny_bloom())
    models = tuple(replace(m, decoding={"max_new_tokens": 16, "temperature": 0}) for m in cfg.models if m.name != "bare")
    e = LocalEngine(replace(cfg, models=models, max_batch_size=1), registry=REG)
    previous = generation._backend
    generation.set_backend(e)
    ctx = AppContext.create(e, test_settings(tmp_path))
    h = ArenaHandlers(ctx, "anonymous", random.Random(0))
    show = shown_text()
    places = {show(generation.waiting_text(p)): p for p in (1, 2, 3)}

    def sides_of(view) -> tuple[str, str]:
        """The last answer each side shows ("" before it has one)."""
        out = []
        for update in view[1:3]:
            messages = update["value"]
            out.append(messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else "")
        return tuple(out)

    def battle_behind_a_full_batch(message: str, battle_id: str, once_both_wait) -> list[tuple[str, str]]:
        """Send ``message`` while a request that runs until released holds the only place in the
        batch; call ``once_both_wait(release)`` when both sides first show a place in the queue."""
        release = threading.Event()
        busy = e.stream("a", QUESTIONS[0], decoding=Decoding(max_new_tokens=1000, temperature=0), cancel=release)
        next(d for d in busy if not isinstance(d, Queued))  # running: the batch is full
        seen, called = [], False
        try:
            for view in h.send_anonymous(message, battle_id):
                seen.append((view[0], *sides_of(view)))
                if not called and all(s in places for s in seen[-1][1:]):
                    called = True
                    once_both_wait(release)
        finally:
            release.set()
            busy.close()
        assert called, f"both sides should have shown their place in the queue: {seen}"
        return seen

    try:
        # Stopped while both sides wait: they end empty and the battle keeps no turn.
        stopped = battle_behind_a_full_batch("Hà Nội ở đâu?", "", lambda release: h.stop())
        battle_id = stopped[-1][0]
        battle = ctx.battles.get(battle_id, ctx.session(None))
        assert battle.turns == [] and stopped[-1][1:] == ("", "")

        # The same battle again: each side shows its place, then its answer once the batch frees.
        views = battle_behind_a_full_batch("Hà Nội ở đâu?", battle_id, lambda release: release.set())
        first = next(v[1:] for v in views if all(s in places for s in v[1:]))
        assert sorted(places[s] for s in first) == [1, 2]  # one queue, one place each
        alone = tuple("".join(e.stream(m, "Hà Nội ở đâu?", decoding=ctx.model(m).decoding)) for m in battle.models)
        assert all(alone) and battle.turns == [("Hà Nội ở đâu?", *alone)]
        for k in (1, 2):
            shown = [v[k] for v in views]
            start = next(i for i, s in enumerate(shown) if s and s not in places)
            waited = [places[s] for s in shown[:start] if s in places]
            assert waited and waited == sorted(waited, reverse=True)  # the place only improves
            assert not any(s in places for s in shown[start:]) and shown[-1] == show(alone[k - 1])

        # The next turn's history is the answers alone; the stored vote too.
        sides = []
        real_stream = e.stream

        def recording(model, message, history=(), **kw):
            sides.append(tuple(history))
            return real_stream(model, message, history, **kw)

        e.stream = recording
        try:
            list(h.send_anonymous("Còn Huế?", battle_id))
        finally:
            del e.stream
        assert sorted(sides) == sorted([(("Hà Nội ở đâu?", answer),) for answer in alone])
        assert "Đã ghi nhận" in h.vote("tie", battle_id)[2]
        [row] = votes_in(ctx.settings.votes_db)
        assert json.loads(row["turns"]) == [{"prompt": "Hà Nội ở đâu?", "answer_a": alone[0], "answer_b": alone[1]}]
        assert "⏳" not in row["answer_a"] + row["answer_b"] and row["answer_a"] and row["answer_b"]
    finally:
        generation._backend = previous
        e.close()
