"""The runner's KV cache (full-attention layers grow in place) and its mixed-adapter hooks."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.cache_utils import DynamicLayer

from serve_helpers import tiny_bloom
from vichat.serve.runner import (GROW_BLOCK, BatchRunner, append_rows, drop_left, growing, growing_layer_class,
                                 load_adapters, select_rows)


def kv(batch: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, n, 4, generator=g), torch.randn(batch, 2, n, 4, generator=g)


def feed(caches, batch: int, n: int, seed: int) -> None:
    for layer in range(2):
        k, v = kv(batch, n, seed + layer)
        for cache in caches:
            got_k, got_v = cache.update(k, v, layer)
            assert got_k.shape[-2] == cache.get_seq_length(layer)


def same(plain: DynamicCache, grow: DynamicCache) -> None:
    assert len(plain.layers) == len(grow.layers) == 2
    for a, b in zip(plain.layers, grow.layers):
        assert type(b).__name__ == "GrowingLayer"
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_a_growing_cache_holds_what_dynamic_cache_holds_through_joins_leaves_and_trims():
    plain, grow = DynamicCache(), growing(DynamicCache())  # layers made at first use
    feed((plain, grow), 3, 7, seed=0)  # a prefill of 7 positions
    same(plain, grow)
    for step in range(150):
        feed((plain, grow), plain.layers[0].keys.shape[0], 1, seed=10 + 2 * step)  # one decoding step
        if step == 40:  # a request leaves: rows 0 and 2 stay
            for c in (plain, grow):
                select_rows(c, [0, 2])
        if step == 60:  # padding no row needs goes
            for c in (plain, grow):
                drop_left(c, 3)
        if step == 90:  # a prefilled request joins, with a longer cache than the batch's
            joining = [DynamicCache(), growing(DynamicCache())]
            feed(joining, 1, 120, seed=999)
            for c, j in zip((plain, grow), joining):
                append_rows(c, j)
        same(plain, grow)
    assert plain.layers[0].keys.shape[0] == 3 and grow.get_seq_length(0) == plain.get_seq_length(0)


def test_a_growing_layer_copies_its_buffer_once_per_block_not_once_per_token():
    layer = growing_layer_class()()
    k, v = kv(2, 10, seed=1)
    layer.update(k, v)
    tokens = 5 * GROW_BLOCK
    for i in range(tokens):
        k, v = kv(2, 1, seed=100 + i)
        layer.update(k, v)
        assert layer.keys.shape[-2] == 11 + i
        assert layer.keys.data_ptr() == layer._kbuf.data_ptr()  # a view of the buffer: no copy made
    # One buffer for the prefill, then one per GROW_BLOCK tokens (a DynamicLayer copies on every one).
    assert layer.grown <= 1 + tokens // GROW_BLOCK + 1
    assert layer._kbuf.shape[-2] - layer.keys.shape[-2] <= GROW_BLOCK  # spare room stays bounded


def test_rows_that_leave_free_their_memory_at_once():
    cache = growing(DynamicCache())
    feed([cache], 4, 50, seed=3)
    before = weakref.ref(cache.layers[0]._kbuf)
    select_rows(cache, [1])
    gc.collect()
    assert before() is None  # the four-row buffer is gone, not kept until the next step
    assert cache.layers[0].keys.shape[0] == 1
    feed([cache], 1, 1, seed=4)
    assert cache.get_seq_length(0) == 51


def test_only_plain_full_attention_layers_grow():
    from transformers.cache_utils import DynamicSlidingWindowLayer

    cache = DynamicCache()
    cache.layers = [DynamicLayer(), DynamicSlidingWindowLayer(sliding_window=4)]
    growing(cache)
    assert type(cache.layers[0]).__name__ == "GrowingLayer"
    assert type(cache.layers[1]) is DynamicSlidingWindowLayer


@pytest.fixture(scope="module")
def peft_model():
    built = tiny_bloom()
    base = AutoModelForCausalLM.from_pretrained(str(built.base))
    return load_adapters(base, [(name, str(path)) for name, path in built.adapters.items()]).eval()


def test_the_runner_hooks_each_lora_layer_once_and_only_during_its_mixed_passes(peft_model):
    from peft.tuners.lora import LoraLayer

    first, second = BatchRunner(peft_model), BatchRunner(peft_model)
    assert first._mixing is second._mixing  # two runners on one model share the hooks
    lora = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert lora and all(len(m._forward_pre_hooks) == 1 for m in lora)

    seen: list = []
    spy = lora[0].register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs.get("adapter_names")),
                                            with_kwargs=True)
    try:
        ids = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
        mask = torch.ones_like(ids)
        mixed = first.forward(ids, mask, first.new_cache(), ["a", None, "b"])
        assert seen[-1] == ["a", "__base__", "b"] and first._mixing.names is None
        # Each row equals its run alone, under its own adapter.
        for row, adapter in enumerate(["a", None, "b"]):
            alone = first.forward(ids[row:row + 1], mask[row:row + 1], first.new_cache(), [adapter])
            torch.testing.assert_close(mixed[row:row + 1], alone, rtol=1e-5, atol=1e-5)
        assert seen[-1] is None  # one adapter per pass: no names passed

        # Outside the runner's passes the hooks pass nothing: peft's own adapter_names works as documented.
        first.reset()
        with torch.inference_mode():
            out = peft_model(input_ids=ids, attention_mask=mask, adapter_names=["a", "__base__", "b"]).logits[:, -1]
        torch.testing.assert_close(out, mixed, rtol=1e-5, atol=1e-5)
    finally:
        spy.remove()


def test_a_failed_mixed_pass_leaves_no_adapter_names_behind(peft_model):
    runner = BatchRunner(peft_model)
    bad = torch.tensor([[10 ** 6, 1]])  # out of the vocabulary: the embedding raises
    with pytest.raises(IndexError):
        runner.forward(torch.cat([bad, bad]), torch.ones(2, 2, dtype=torch.long), runner.new_cache(), ["a", "b"])
    assert runner._mixing.names is None


def test_a_requests_seen_ids_follow_its_tokens_past_its_budget():
    from vichat.serve.sampling import Sampler
    from vichat.serve.scheduler import Request
    from vichat.specs import Decoding

    class Text:  # the text stream is not what this test is about
        stopped = False

        def push(self, token):  # noqa: ANN001, ANN201
            return ""

        def flush(self):  # noqa: ANN201
            return ""

    r = Request(adapter=None, prompt_ids=[5, 6, 7], sampler=Sampler(Decoding(temperature=0)), text=Text(),
                max_new_tokens=3, eos_ids=frozenset({0}))
    assert r.seen().tolist() == [5, 6, 7]
    r.take(8)
    assert r.seen().tolist() == [5, 6, 7, 8]
    r.generated += [9, 10]  # more than the buffer was sized for (as a caller may append directly)
    r._ids = None
    assert r.seen().tolist() == [5, 6, 7, 8, 9, 10]
    r.max_new_tokens = 10
    for t in (11, 12, 13):  # past the buffer: rebuilt from the lists
        r.take(t)
        assert r.seen().tolist() == [5, 6, 7, 8, 9, 10] + list(range(11, t + 1))
    r.take(0)  # EOS: not an id of the answer
    assert r.seen().tolist()[-1] == 13 and r.done
