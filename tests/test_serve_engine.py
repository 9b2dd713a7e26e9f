"""The local engine: one base in memory, adapters per request, streaming, concurrency, cancel, errors."""

from __future__ import annotations

import gc
import threading
import time

import pytest
import torch

from serve_helpers import ScriptedModel, byte_token_ids, local_config, tiny_bloom, tokenizer
from vichat.data.templates import CHAT, DOCTOR
from vichat.data.tokenize import encode_text
from vichat.serve.api import ChatBackend, ModelError
from vichat.serve.config import ModelConfig
from vichat.serve.engine import LocalEngine
from vichat.serve.history import fold_history, stop_markers
from vichat.serve.text import REPLACEMENT, final_text
from vichat.specs import Decoding

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage

GREEDY = Decoding(max_new_tokens=24, temperature=0)  # the paper's repetition penalty 1.2 stays on
QUESTIONS = {"a": "Xin chào, bạn khỏe không?", "b": "Tôi bị đau đầu và sốt nhẹ.", "bare": "Hà Nội ở đâu?"}


@pytest.fixture(scope="module")
def engine():
    e = LocalEngine(local_config(tiny_bloom()), registry=REG)
    e.prepare()
    yield e
    e.close()


def hf_greedy(engine: LocalEngine, name: str, message: str, template, dec: Decoding) -> str:
    """The same answer from transformers' own ``generate`` on the engine's model."""
    loaded = engine.prepare()
    tok = loaded.tokenizer.tokenizer
    ids = encode_text(tok, fold_history(template, message))
    runner = loaded.scheduler.runner
    with runner.lock, torch.no_grad():
        runner.reset()  # adapter layers on: generate picks the adapter with adapter_names
        out = engine.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                    max_new_tokens=dec.max_new_tokens, do_sample=False,
                                    repetition_penalty=dec.repetition_penalty,
                                    adapter_names=[loaded.keys[name] or "__base__"])
    return final_text(tok.decode(out[0, len(ids):], skip_special_tokens=True), stop_markers(template))


def solo(engine: LocalEngine, name: str, dec: Decoding = GREEDY) -> str:
    return "".join(engine.stream(name, QUESTIONS[name], decoding=dec))


def test_engine_is_a_chat_backend_and_lists_models_without_loading():
    e = LocalEngine(local_config(tiny_bloom()), registry=REG)
    assert isinstance(e, ChatBackend)
    infos = {m.name: m for m in e.models()}
    assert set(infos) == {"a", "b", "bare"} and infos["b"].template == "doctor"
    assert infos["a"].decoding == Decoding()  # the paper's defaults: 256, 0.5, 20, 1.2
    assert not e.loaded


def test_streamed_deltas_equal_transformers_greedy_generate(engine):
    outputs = {}
    for name, template in (("a", CHAT), ("b", DOCTOR), ("bare", CHAT)):
        deltas = list(engine.stream(name, QUESTIONS[name], decoding=GREEDY))
        assert all(deltas) and all(REPLACEMENT not in d for d in deltas)
        outputs[name] = "".join(deltas)
        assert outputs[name] == hf_greedy(engine, name, QUESTIONS[name], template, GREEDY)
    # The adapters really change the model: same question, three different answers.
    same_q = {n: "".join(engine.stream(n, "Câu hỏi chung", decoding=GREEDY)) for n in ("a", "b", "bare")}
    assert len(set(same_q.values())) == 3


def _record_forwards(engine: LocalEngine) -> list:
    """Wrap the runner's forward: the adapters of every pass, in order (undo with ``del runner.forward``)."""
    runner = engine.prepare().scheduler.runner
    passes: list = []
    original = runner.forward

    def forward(ids, mask, cache, adapters):
        passes.append((ids.shape[1], list(adapters)))
        return original(ids, mask, cache, adapters)

    runner.forward = forward
    return passes


def _together(engine: LocalEngine, jobs: dict, dec: Decoding) -> dict:
    """Submit every job while the scheduler is held, so they all start in the same step; drain them."""
    scheduler = engine.prepare().scheduler
    results = {name: "" for name in jobs}
    with scheduler._cond:  # the scheduler admits under this lock: every request is queued before it looks
        streams = {name: engine.stream(model, message, decoding=dec) for name, (model, message) in jobs.items()}

    def drain(name):
        for delta in streams[name]:
            results[name] += delta

    threads = [threading.Thread(target=drain, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("dec, seed", [(GREEDY, None), (Decoding(max_new_tokens=24, temperature=0.8), 1234)])
def test_mixed_adapters_decode_in_one_batch_and_equal_solo_runs(engine, dec, seed):
    engine.seed = seed
    runner = engine.prepare().scheduler.runner
    try:
        alone = {name: solo(engine, name, dec) for name in QUESTIONS}
        passes = _record_forwards(engine)
        results = _together(engine, {n: (n, q) for n, q in QUESTIONS.items()}, dec)
    finally:
        engine.seed = None
        runner.__dict__.pop("forward", None)
    assert results == alone
    # The three prompts are prefilled together (in chunks), then one forward pass per step carries
    # all three adapters (a: adapter a, b: adapter b, bare: no adapter) until the first one ends.
    keys = engine.prepare().keys
    three = [keys[n] for n in QUESTIONS]
    prefill = [p for p in passes if p[0] > 1]
    assert prefill and all(p[1] == three for p in prefill)
    assert next(p for p in passes if p[0] == 1) == (1, three)
    assert len(passes) <= len(prefill) + GREEDY.max_new_tokens


def test_the_two_sides_of_a_battle_share_every_forward_pass(engine):
    runner = engine.prepare().scheduler.runner
    before = runner.forwards
    passes = _record_forwards(engine)
    try:
        dec = Decoding(max_new_tokens=12, temperature=0, repetition_penalty=1.0)
        results = _together(engine, {"left": ("a", "Hà Nội ở đâu?"), "right": ("b", "Hà Nội ở đâu?")}, dec)
    finally:
        runner.__dict__.pop("forward", None)
    assert results["left"] and results["right"]
    keys = engine.prepare().keys
    # Each pass carries both sides while both run: at most one pass per token, not one per side.
    both = [p for p in passes if sorted(p[1]) == sorted([keys["a"], keys["b"]])]
    decode = [p for p in passes if p[0] == 1]
    # Prefill chunks, then one pass per token carrying both sides, until one side ends.
    assert passes[:len(both)] == both and sum(p[0] == 1 for p in both) >= 2 and len(decode) <= 12
    assert runner.forwards - before == len(passes)


def test_requests_join_and_leave_between_steps_and_free_their_cache(engine):
    scheduler = engine.prepare().scheduler
    long_dec = Decoding(max_new_tokens=40, temperature=0, repetition_penalty=1.0)
    first = engine.stream("a", QUESTIONS["a"], decoding=long_dec)
    got = [next(first)]  # "a" is decoding...
    short = "".join(engine.stream("b", QUESTIONS["b"], decoding=Decoding(max_new_tokens=3, temperature=0)))
    assert short  # ...and "b" joined, finished and left while "a" kept going
    rest = "".join(first)
    assert "".join(got) + rest == solo(engine, "a", long_dec)
    deadline = time.time() + 5
    while (scheduler.active() or scheduler.in_batch()) and time.time() < deadline:
        time.sleep(0.01)
    assert scheduler.active() == 0 and scheduler.in_batch() == 0 and scheduler._cache is None


def test_one_base_in_memory_serves_every_adapter(engine):
    from peft import PeftModel
    from transformers import BloomForCausalLM

    model = engine.model
    assert isinstance(model, PeftModel) and set(model.peft_config) == {"a", "b"}
    fresh = BloomForCausalLM.from_pretrained(str(tiny_bloom().base))
    n_base = sum(p.numel() for p in fresh.parameters())
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    n_all = sum(p.numel() for p in model.parameters())
    assert n_all == n_base + n_lora and n_lora < 0.2 * n_base  # the base's weights exist once
    del fresh

    def blooms() -> int:
        gc.collect()
        return sum(type(o) is BloomForCausalLM for o in gc.get_objects())

    ptrs = {p.data_ptr() for p in model.parameters()}
    before = blooms()
    for name in ("a", "b", "bare", "a"):
        solo(engine, name)
    assert blooms() == before  # switching adapters never builds another model
    assert {p.data_ptr() for p in model.parameters()} == ptrs


def test_unknown_model_lists_the_available_ones(engine):
    with pytest.raises(ModelError, match=r"unknown model 'nope'; available: a, b, bare"):
        engine.stream("nope", "Xin chào")


# --------------------------------------------------------------------------- scripted model


def scripted(text: str, *, eos: bool = False, after: int | None = None, delay: float = 0.0, **kw):
    tok = tokenizer()
    script = byte_token_ids(tok, text) + ([tok.eos_token_id] if eos else [])
    model = ScriptedModel(len(tok), script, after=after, delay=delay)
    models = [ModelConfig(name="m", template="chat", **kw)]
    engine = LocalEngine.from_loaded(model, tok, models, base="tiny")
    engine.prepare().scheduler.prefill_chunk = 1 << 20  # the scripted model takes a prompt in one call
    return engine, model


def test_stop_marker_split_over_tokens_is_never_shown_and_ends_generation():
    answer = "Chào bạn! Đây là câu trả lời."
    e, model = scripted(answer + "\n### Instruction:\nCâu hỏi bịa thêm", after=tokenizer().convert_tokens_to_ids("a"))
    deltas = list(e.stream("m", "Xin chào"))
    assert "".join(deltas) == answer and not any("#" in d for d in deltas)
    n_marker = len(byte_token_ids(tokenizer(), answer + "\n### Instruction:"))
    assert len(model.calls) == n_marker  # no token decoded after the marker completed
    e.close()


def test_a_response_marker_also_ends_the_answer():
    e, _ = scripted("Dịch câu sau?\n### Response:\nMột câu bịa", after=5)
    assert "".join(e.stream("m", "Xin chào")) == "Dịch câu sau?"
    e.close()


def test_eos_and_max_new_tokens_end_generation():
    e, model = scripted("Xin chào", eos=True, after=5)
    assert "".join(e.stream("m", "hi")) == "Xin chào"
    assert len(model.calls) == len(byte_token_ids(tokenizer(), "Xin chào")) + 1
    e.close()
    e, model = scripted("abcdefghij", after=5)
    assert "".join(e.stream("m", "hi", decoding=Decoding(max_new_tokens=4))) == "abcd"
    assert len(model.calls) == 4
    e.close()


def test_prompt_is_the_folded_history_and_old_turns_go_first():
    tok = tokenizer()
    history = [("Câu một " * 30, "Trả lời một " * 30), ("Câu hai", "Trả lời hai")]
    e, model = scripted("ok", eos=True)
    list(e.stream("m", "Câu ba", history, template="doctor"))
    assert model.calls[0] == encode_text(tok, fold_history(DOCTOR, "Câu ba", history))
    # A context too small for the first turn: it is dropped, the second stays.
    need = len(encode_text(tok, fold_history(CHAT, "Câu ba", history[1:])))
    e, model = scripted("ok", eos=True, decoding={"max_new_tokens": 8})
    e.config = e.config.__class__(**{**e.config.__dict__, "context": need + 8})
    e._loaded.context = need + 8
    list(e.stream("m", "Câu ba", history))
    assert model.calls[0] == encode_text(tok, fold_history(CHAT, "Câu ba", history[1:]))


def test_cancel_stops_generation_and_frees_the_request():
    e, model = scripted("", after=tokenizer().convert_tokens_to_ids("a"), delay=0.002)
    scheduler = e.prepare().scheduler
    cancel = threading.Event()
    got = []
    for delta in e.stream("m", "hi", decoding=Decoding(max_new_tokens=10_000, temperature=0), cancel=cancel):
        got.append(delta)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3
    deadline = time.time() + 2
    while scheduler.active() and time.time() < deadline:
        time.sleep(0.01)
    assert scheduler.active() == 0
    steps = len(model.calls)
    time.sleep(0.1)
    assert len(model.calls) == steps < 200
    # Leaving the loop early (the page closed) frees the request too.
    it = e.stream("m", "hi", decoding=Decoding(max_new_tokens=10_000, temperature=0))
    next(it)
    it.close()
    deadline = time.time() + 2
    while scheduler.active() and time.time() < deadline:
        time.sleep(0.01)
    assert scheduler.active() == 0
    e.close()


def test_a_generation_failure_is_a_short_model_error_and_the_engine_stays_up():
    e, model = scripted("Xin chào", eos=True)
    model.fail = True
    with pytest.raises(ModelError, match="generation failed: RuntimeError: scripted failure"):
        list(e.stream("m", "hi"))
    assert "".join(e.stream("m", "hi")) == "Xin chào"
    e.close()


def test_load_failure_is_a_model_error_naming_the_backend(tmp_path):
    from vichat.serve.config import LocalBackendConfig

    e = LocalEngine(LocalBackendConfig(base="bloomz-560m", base_path=str(tmp_path), models=(ModelConfig(name="x"),)), registry=REG)
    with pytest.raises(ModelError, match="cannot load local backend 'bloomz-560m'"):
        e.stream("x", "hi")
