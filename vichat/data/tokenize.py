"""Tokenisation for supervised fine-tuning: loss on the response only, EOS always, exact truncation.

The contract (docs/templates.md explains it with an example):

- ``input_ids = [BOS?] + encode(prompt) + encode(response) + [EOS]``. The prompt and the response
  are encoded **separately** and their ids concatenated: at inference the model is fed
  ``encode(prompt)`` and generates the response tokens after it, so that is exactly what training
  must show it. ``encode`` adds no special tokens and treats special-token strings inside the text
  (``"</s>"``, ``"<|endoftext|>"``) as plain text (see :func:`encode_text`). Text is NFC-normalised
  first.
- ``labels`` is ``-100`` on every prompt token (BOS included); the response tokens and the final EOS
  keep their ids, so the loss teaches the answer and when to stop, never the prompt.
- BOS is added only when the tokenizer itself adds one (``tokenizer.add_bos_token``); BLOOM and GPT-J
  do not, so by default there is none.
- Over-long samples are cut **in the instruction first** (from its end, the template's preamble and
  the ``### Response:`` marker stay intact), down to a floor of half of ``max_length`` (or the whole
  prompt if shorter); only then is the response cut from its end. EOS is appended after a cut
  response too (and labelled, unless ``label_truncated_eos=False``), so every sequence ends in EOS.
- Batches are right-padded; labels are ``-100`` on pad *positions*, never found by comparing ids
  with the pad id (GPT-J pads with EOS, and the real EOS must keep its label).

Packing (:func:`pack_examples`) and length grouping (:func:`length_grouped_batches`) are the two
ways to waste less compute on padding; both are deterministic.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..records import Record, VichatError, nfc
from ..specs import TemplateSpec
from .templates import CHAT, DOCTOR, render_instruction, render_prompt

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and transformers' loss) skips
#: The paper's training sequence length (prompt + response + EOS): the default of training, of
#: tokenisation and of `vichat data stats`' truncation count.
MAX_LENGTH = 512

_BUILTIN_TEMPLATES = {CHAT.name: CHAT, DOCTOR.name: DOCTOR}


def resolve_template(template: TemplateSpec | str, registry: Any = None) -> TemplateSpec:
    """A template spec: ``template`` itself, or the one named so in ``registry`` (the caller's
    plugin registry, where a plugin may replace even ``chat`` and ``doctor``). Without a registry a
    name can only be one of the paper's two built-in templates (for library use and tests)."""
    if isinstance(template, TemplateSpec):
        return template
    if registry is not None:
        return registry.template(template)
    if template in _BUILTIN_TEMPLATES:
        return _BUILTIN_TEMPLATES[template]
    raise VichatError(f"template {template!r}: a plugin's template is looked up in the plugin registry; pass "
                      "registry=vichat.plugins.get_registry() or the TemplateSpec itself")


def encode_text(tokenizer: "PreTrainedTokenizerBase", text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added.

    ``split_special_tokens=True``: a record that contains ``"</s>"`` or ``"<|endoftext|>"`` as
    text must not inject a real EOS mid-sequence. Serving should encode prompts the same way.
    """
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _fields(record: Record | Mapping[str, Any]) -> tuple[str, str, str]:
    # NFC here too (records are NFC already): a tokenizer without an NFC normalizer, such as
    # BLOOM's, would otherwise give decomposed and composed accents different tokens.
    if isinstance(record, Record):
        return nfc(record.instruction), nfc(record.input), nfc(record.output)
    missing = [k for k in ("instruction", "output") if k not in record]
    if missing:
        raise ValueError(f"record lacks {', '.join(missing)}: expected instruction, output and optional input")
    return nfc(str(record["instruction"])), nfc(str(record.get("input") or "")), nfc(str(record["output"]))


def _adds_bos(tokenizer: "PreTrainedTokenizerBase", add_bos: bool | None) -> bool:
    if add_bos is None:
        add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    if add_bos and tokenizer.bos_token_id is None:
        raise ValueError("add_bos=True but the tokenizer has no BOS token")
    return add_bos


def _cut_prompt(
    tokenizer: "PreTrainedTokenizerBase", template: TemplateSpec, body: str, prefix: list[int], budget: int
) -> list[int]:
    """Ids of the prompt with ``body`` (the rendered instruction) cut to its longest prefix whose
    prompt fits in ``budget`` tokens. The cut prompt is re-encoded as a whole, so its ids are
    exactly what the model would see for that text. Binary search over characters: the token
    count is (nearly) monotone in the prefix length, and the result is checked anyway."""

    def ids_for(n_chars: int) -> list[int]:
        return prefix + encode_text(tokenizer, render_prompt(template, body[:n_chars]))

    lo, hi = 0, len(body)  # invariant: lo fits (the bare template, checked by the caller), hi does not
    best = ids_for(0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ids = ids_for(mid)
        if len(ids) <= budget:
            lo, best = mid, ids
        else:
            hi = mid
    return best


def tokenize_record(
    record_or_fields: Record | Mapping[str, Any],
    tokenizer: "PreTrainedTokenizerBase",
    template: TemplateSpec | str = CHAT,
    max_length: int = MAX_LENGTH,
    *,
    add_bos: bool | None = None,
    min_prompt_tokens: int | None = None,
    label_truncated_eos: bool = True,
) -> dict[str, Any]:
    """Tokenise one record for SFT (see the module docstring for the contract).

    :param record_or_fields: a :class:`Record` or a mapping with ``instruction``, ``output`` and
        optional ``input``.
    :param template: a :class:`TemplateSpec` or a template name.
    :param max_length: the longest sequence produced, EOS included.
    :param add_bos: prepend BOS; default: only if the tokenizer adds BOS itself.
    :param min_prompt_tokens: the instruction is never cut below this many prompt tokens (default
        ``max_length // 2``; the bare template is always kept); past it the response is cut instead.
    :param label_truncated_eos: when the response was cut, still train on the EOS after it
        (default, the sequence always ends in a labelled EOS); ``False`` keeps EOS but masks it.
    :returns: ``input_ids``, ``labels``, ``attention_mask`` (lists of ints), ``n_prompt_tokens``
        and ``truncated`` (whether anything was cut).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token: SFT needs one to teach the model to stop")
    tpl = resolve_template(template)
    instruction, input_text, output = _fields(record_or_fields)
    prefix = [tokenizer.bos_token_id] if _adds_bos(tokenizer, add_bos) else []

    prompt_ids = prefix + encode_text(tokenizer, render_prompt(tpl, instruction, input_text))
    response_ids = encode_text(tokenizer, output)
    truncated = response_cut = False

    if len(prompt_ids) + len(response_ids) + 1 > max_length:
        truncated = True
        bare = len(prefix) + len(encode_text(tokenizer, render_prompt(tpl, "")))
        if max_length < bare + 2:
            raise ValueError(
                f"max_length={max_length} is too small for template {tpl.name!r}: its text alone takes "
                f"{bare} tokens, and a sample needs at least one response token and EOS after it"
            )
        floor = max_length // 2 if min_prompt_tokens is None else min_prompt_tokens
        floor = min(len(prompt_ids), max(bare, min(floor, max_length - 2)))
        budget = max(max_length - len(response_ids) - 1, floor)
        if len(prompt_ids) > budget:
            body = render_instruction(tpl, instruction, input_text)
            prompt_ids = _cut_prompt(tokenizer, tpl, body, prefix, budget)
        room = max_length - len(prompt_ids) - 1
        if len(response_ids) > room:
            response_ids, response_cut = response_ids[:room], True

    eos_label = IGNORE_INDEX if (response_cut and not label_truncated_eos) else eos
    input_ids = prompt_ids + response_ids + [eos]
    return {
        "input_ids": input_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids + [eos_label],
        "attention_mask": [1] * len(input_ids),
        "n_prompt_tokens": len(prompt_ids),
        "truncated": truncated,
    }


# --------------------------------------------------------------------------- batching


def tokenize_records(
    records: Sequence[Record | Mapping[str, Any]],
    tokenizer: "PreTrainedTokenizerBase",
    template: TemplateSpec | str = CHAT,
    max_length: int = MAX_LENGTH,
    *,
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """:func:`tokenize_record` on every record, with the same ids, in batched tokenizer calls.

    Prompts and responses are encoded in batches (a fast tokenizer encodes a batch in parallel, in
    Rust); a record that needs cutting, or any record when ``add_bos`` would differ, goes through
    :func:`tokenize_record` itself, so the truncation rules have one implementation."""
    tpl = resolve_template(template)
    prefix = [tokenizer.bos_token_id] if _adds_bos(tokenizer, None) else []
    eos = tokenizer.eos_token_id
    out: list[dict[str, Any]] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        fields = [_fields(r) for r in chunk]
        enc = dict(add_special_tokens=False, split_special_tokens=True)
        prompts = tokenizer([render_prompt(tpl, i, x) for i, x, _ in fields], **enc)["input_ids"]
        responses = tokenizer([o for _, _, o in fields], **enc)["input_ids"]
        for record, p_ids, r_ids in zip(chunk, prompts, responses):
            prompt_ids = prefix + list(p_ids)
            if eos is None or len(prompt_ids) + len(r_ids) + 1 > max_length:
                try:  # cut (or refused) by the one implementation of the rules
                    out.append(tokenize_record(record, tokenizer, tpl, max_length))
                except ValueError as exc:
                    rid = record.id if isinstance(record, Record) else record.get("id")
                    raise ValueError(f"record {rid!r}: {exc}") from None
                continue
            input_ids = prompt_ids + list(r_ids) + [eos]
            out.append({
                "input_ids": input_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + list(r_ids) + [eos],
                "attention_mask": [1] * len(input_ids),
                "n_prompt_tokens": len(prompt_ids),
                "truncated": False,
            })
    return out


def pad_token_id_for(tokenizer: "PreTrainedTokenizerBase") -> int:
    """The id to pad with: the pad token, else EOS (GPT-J), else 0. Which id it is does not matter
    for the loss (pad positions are masked), only that it is a valid embedding index."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


@dataclass
class DataCollatorForSFT:
    """Right-pads a list of :func:`tokenize_record` outputs into torch tensors.

    Returns ``input_ids`` (padded with :func:`pad_token_id_for`), ``labels`` (``-100`` on pad
    positions) and ``attention_mask`` (0 on pads). Padding is always on the right: training
    needs the response at the end (GPT-J in particular); ``tokenizer.padding_side`` is for
    generation and is ignored here.

    Packed features (those with ``position_ids``, from :func:`pack_examples`) get ``position_ids``
    instead of ``attention_mask``: a 2-D padding mask cannot keep packed samples apart, while
    transformers builds a per-sample causal mask from restarting ``position_ids`` when no
    ``attention_mask`` is passed. Pad positions continue as one more "sample" starting at 0.
    Other keys (``n_prompt_tokens``, ``seq_lens``...) are dropped.
    """

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, "torch.Tensor"]:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        packed = all("position_ids" in f for f in features)
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = -(-width // m) * m
        batch = len(features)
        input_ids = torch.full((batch, width), pad_token_id_for(self.tokenizer), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f.get("labels", f["input_ids"]), dtype=torch.long)
            attention_mask[row, :n] = torch.as_tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
            if packed:
                position_ids[row, :n] = torch.as_tensor(f["position_ids"], dtype=torch.long)
                position_ids[row, n:] = torch.arange(width - n)
        out = {"input_ids": input_ids, "labels": labels}
        if packed:
            out["position_ids"] = position_ids
        else:
            out["attention_mask"] = attention_mask
        return out


# --------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[Mapping[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Pack tokenised examples into sequences of at most ``max_length`` tokens.

    Best-fit decreasing: examples are placed longest first (ties: original order), each into the
    pack with the least room that still fits it (ties: the older pack), else into a new pack.
    Deterministic; packs are returned in creation order, samples in each pack in placement order.

    Each pack has ``input_ids``, ``labels``, ``position_ids`` (restarting at 0 for every sample),
    ``seq_lens``, ``cu_seqlens`` (``[0, l1, l1+l2, ...]``) and ``example_ids`` (indices into
    ``examples``). There is no ``attention_mask``: samples must not attend to each other, so the
    trainer must either pass ``position_ids`` with no ``attention_mask`` (transformers then builds
    a per-sample causal mask, e.g. GPT-J; flash-attention varlen needs batch size 1) or pass the
    4-D mask from :func:`packed_attention_mask`. Note that transformers' BLOOM ignores
    ``position_ids``: packing BLOOM needs that explicit mask (and a custom ALiBi path).
    The first label of every sample is ``-100`` so no sample is trained to predict the next one.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    for i, n in enumerate(lengths):
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length={max_length}: tokenise with the same max_length")
        if n == 0:
            raise ValueError(f"example {i} is empty")
    order = sorted(range(len(examples)), key=lambda i: -lengths[i])  # stable: ties keep input order
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, pack index), sorted
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos < len(free):
            room, p = free.pop(pos)
        else:
            room, p = max_length, len(packs)
            packs.append([])
        packs[p].append(i)
        bisect.insort(free, (room - lengths[i], p))

    out = []
    for members in packs:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        for i in members:
            ex = examples[i]
            ex_labels = list(ex.get("labels", ex["input_ids"]))
            ex_labels[0] = IGNORE_INDEX
            input_ids += list(ex["input_ids"])
            labels += ex_labels
            position_ids += list(range(lengths[i]))
        seq_lens = [lengths[i] for i in members]
        cu = [0]
        for n in seq_lens:
            cu.append(cu[-1] + n)
        out.append(
            {
                "input_ids": input_ids,
                "labels": labels,
                "position_ids": position_ids,
                "seq_lens": seq_lens,
                "cu_seqlens": cu,
                "example_ids": list(members),
            }
        )
    return out


def packed_attention_mask(seq_lens: Sequence[int], length: int | None = None) -> "torch.Tensor":
    """Boolean ``[length, length]`` mask, True where a query (row) may attend to a key (column):
    causal inside each sample, nothing across samples. Positions past ``sum(seq_lens)`` (padding)
    form one more block, so no row is empty. Add two leading dims for a 4-D attention mask."""
    import torch

    total = sum(seq_lens)
    length = total if length is None else length
    if length < total:
        raise ValueError(f"length={length} is shorter than the packed samples ({total} tokens)")
    block = torch.repeat_interleave(
        torch.arange(len(seq_lens) + 1), torch.tensor(list(seq_lens) + [length - total])
    )
    same = block[:, None] == block[None, :]
    return same & torch.ones(length, length, dtype=torch.bool).tril()


def length_grouped_batches(
    lengths: Sequence[int],
    *,
    batch_size: int | None = None,
    batch_tokens: int | None = None,
    seed: int = 0,
    shuffle: bool = True,
    mega_batch_mult: int = 50,
) -> list[list[int]]:
    """Batches of indices whose examples have similar lengths, so little of a batch is padding.

    The indices are shuffled with ``seed`` (unless ``shuffle=False``), cut into mega-batches of
    ``mega_batch_mult`` batches, each sorted by length (longest first, ties in order), then split
    into batches: ``batch_size`` examples each, or as many as fit ``batch_tokens`` padded tokens
    (``count * longest <= batch_tokens``; a longer example gets a batch alone). With ``shuffle``
    the batch order is shuffled too, and the batch with the most padded tokens goes first so an
    out-of-memory error shows at step one, not hours in. Every index appears exactly once.
    """
    if (batch_size is None) == (batch_tokens is None):
        raise ValueError("pass exactly one of batch_size or batch_tokens")
    if (batch_size or batch_tokens or 0) < 1:
        raise ValueError("batch_size / batch_tokens must be positive")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)

    chunks: list[list[int]] = []
    if batch_size is not None:
        step = batch_size * mega_batch_mult
        chunks = [order[i : i + step] for i in range(0, len(order), step)]
    else:
        limit, current, total = batch_tokens * mega_batch_mult, [], 0
        for i in order:
            current.append(i)
            total += lengths[i]
            if total >= limit:
                chunks.append(current)
                current, total = [], 0
        if current:
            chunks.append(current)

    batches: list[list[int]] = []
    for chunk in chunks:
        chunk = sorted(chunk, key=lambda i: -lengths[i])
        if batch_size is not None:
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
            continue
        current = []
        for i in chunk:  # chunk is sorted, so current[0] is the longest in the batch
            if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)

    if shuffle and batches:
        rng.shuffle(batches)
        biggest = max(range(len(batches)), key=lambda b: len(batches[b]) * max(lengths[i] for i in batches[b]))
        batches.insert(0, batches.pop(biggest))
    return batches
