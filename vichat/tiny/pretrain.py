"""From-scratch pretraining of the tiny BLOOM base: corpus → documents → split → tokens → loop → perplexity.

Everything here is deterministic for a seed, with nothing but the seed as state:

* the held-out split hashes each document's *group* (a record id, or ``file:line``), so it does not
  depend on the seed, on file order or on which other files are in the corpus;
* the base is a plain language model: instruction records are read as plain text (instruction,
  input, output), never rendered with a prompt template, so the template is what the adapters teach;
* documents that contain text the adapters train, validate or are evaluated on are dropped before
  the split (:func:`decontaminate`), so the base never sees those records;
* batch ``k`` is drawn from a generator seeded with ``(seed, k)``, so a run resumed from a
  checkpoint at step ``k`` sees exactly the batches an uninterrupted run would;
* dropout draws from torch's global generator, seeded before the model is built; a checkpoint
  stores its state, so a resumed run draws the same masks.

torch and transformers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..records import VichatError, nfc
from ..specs import DEFAULT_FIELD_MAP

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import TinyConfig

#: ``--corpus sample`` (and the default) means the bundled pretraining text, ``vichat/data/sample/prose.jsonl``
#: (general Vietnamese prose written for the project; none of it is an instruction record).
SAMPLE = "sample"
SAMPLE_FILES = ("prose.jsonl",)
TEXT_SUFFIXES = (".txt", ".md")
TEXT_FIELDS = ("text", "content")

#: Called after every optimizer step with ``(step, total_steps, loss)``; may raise to stop the run
#: (the loop checkpoints first, so a rerun resumes where it stopped).
StepHook = Callable[[int, int, float], None]


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Document:
    """One training text. ``group`` is the unit of the held-out split (all texts of one record)."""

    group: str
    text: str
    where: str = ""  # "file:line" for messages


@dataclass
class Corpus:
    """The training and held-out texts, and an account of what was read."""

    train: list[str]
    heldout: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "path:line: why", first few
    n_skipped: int = 0
    removed: list[str] = field(default_factory=list)  # documents dropped as contaminated: "where: why", first few
    n_removed: int = 0

    def summary(self) -> dict[str, Any]:
        """Counts for report.json."""
        return {
            "sources": self.sources,
            "train_texts": len(self.train),
            "train_chars": sum(map(len, self.train)),
            "heldout_texts": len(self.heldout),
            "heldout_chars": sum(map(len, self.heldout)),
            "skipped_rows": self.n_skipped,
            "skipped_first": self.skipped,
            "decontaminated_documents": self.n_removed,
            "decontaminated_first": self.removed,
        }


def normalize_sources(corpus: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """``None`` → ``["sample"]``; paths become absolute strings, so the same files give the same key."""
    if corpus is None:
        return [SAMPLE]
    items = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    if not items:
        return [SAMPLE]
    out = []
    for item in items:
        text = os.fspath(item)
        if text == SAMPLE:
            out.append(SAMPLE)
            continue
        path = Path(text).expanduser()
        if not path.exists():
            raise VichatError(f"--corpus {text}: no such file or folder (pass a .jsonl/.json/.csv/.parquet/.txt "
                              f"file or folder, or {SAMPLE!r} for the bundled sample)")
        out.append(str(path.resolve()))
    return out


def _source_files(source: str) -> list[tuple[str, Any]]:
    """``(label, file)`` pairs for a source: package resources for the sample, real paths otherwise."""
    if source == SAMPLE:
        root = resources.files("vichat.data").joinpath("sample")
        files = []
        for name in SAMPLE_FILES:
            res = root.joinpath(name)
            if not res.is_file():
                raise VichatError(f"the bundled sample vichat/data/sample/{name} is missing; reinstall vichat "
                                  "or pass --corpus PATH")
            files.append((f"sample/{name}", res))
        return files
    from ..data.readers import SUFFIXES, data_files

    path = Path(source)
    if path.is_file():
        return [(str(path), path)]
    files = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES]
    try:
        files += data_files(path)
    except VichatError:
        if not files:
            raise VichatError(f"--corpus {path}: no data files found (expected {', '.join(SUFFIXES + TEXT_SUFFIXES)})")
    return [(str(p), p) for p in sorted(set(files))]


def fingerprint(sources: Sequence[str]) -> list[dict[str, Any]]:
    """Each corpus file's sha256 and size: the part of the cache key that stands for the data."""
    out = []
    for source in sources:
        for label, file in _source_files(source):
            digest, size = hashlib.sha256(), 0
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            # The sample is named by its package path: the key must not depend on where vichat is installed.
            out.append({"file": label, "sha256": digest.hexdigest(), "bytes": size})
    return out


def sample_fingerprint(names: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`fingerprint` of bundled files ``vichat/data/sample/<name>``."""
    root = resources.files("vichat.data").joinpath("sample")
    out = []
    for name in names:
        res = root.joinpath(name)
        if not res.is_file():
            raise VichatError(f"the bundled file vichat/data/sample/{name} is missing; reinstall vichat")
        data = res.read_bytes()
        out.append({"file": f"sample/{name}", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
    return out


def _first(data: Any, keys: Sequence[str]) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def record_text(instruction: str, output: str, input: str = "") -> str:
    """The text an instruction record contributes to pretraining: instruction, input and output as
    plain paragraphs, with no prompt template (the adapters are what teach the format)."""
    return "\n\n".join(t for t in (instruction, input, output) if t)


def _rows(label: str, file: Any) -> Iterator[tuple[str, Any]]:
    """``(location, data)`` for each row; text files give one row per blank-line-separated paragraph."""
    from ..data.readers import read_rows

    suffix = Path(str(file)).suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = Path(file).read_text(encoding="utf-8", errors="strict")
        for i, para in enumerate(text.split("\n\n")):
            if para.strip():
                yield f"{label}:para {i + 1}", {"text": para}
        return
    with resources.as_file(file) as real:
        for row in read_rows(real):
            # Locations name the label, not a temporary path (and not the install dir for the sample).
            where = row.location.replace(str(real), label, 1)
            yield where, row.data


def read_documents(sources: Sequence[str]) -> tuple[list[Document], list[str], int]:
    """Every document of ``sources``, plus the first few skipped rows (``"where: why"``) and their count.

    A row with ``text`` (or ``content``) is one document; an instruction row (``instruction``/``prompt``
    and ``output``/``response``, optional ``input``) gives :func:`record_text`, as plain text.
    """
    docs: list[Document] = []
    skipped: list[str] = []
    n_skipped = 0
    for source in sources:
        for label, file in _source_files(source):
            for where, data in _rows(label, file):
                problem = getattr(data, "problem", None)
                text = "" if problem else _first(data, TEXT_FIELDS)
                instruction = "" if problem else _first(data, DEFAULT_FIELD_MAP["instruction"])
                output = "" if problem else _first(data, DEFAULT_FIELD_MAP["output"])
                # The group is the record's own id when it has one, so a record keeps its side of
                # the split when the file is reordered or other files are added.
                group = f"{label}#{data.get('id')}" if (not problem and data.get("id") is not None) else where
                if text:
                    docs.append(Document(group, nfc(text), where))
                elif instruction and output:
                    extra = _first(data, DEFAULT_FIELD_MAP["input"])
                    docs.append(Document(group, record_text(nfc(instruction), nfc(output), nfc(extra)), where))
                else:
                    n_skipped += 1
                    if len(skipped) < 5:
                        skipped.append(f"{where}: {problem or 'no text field (text) and no instruction/output pair'}")
    return docs, skipped, n_skipped


def decontaminate(docs: Sequence[Document], protected: Sequence[str], min_chars: int = 24,
                  ) -> tuple[list[Document], list[str], int]:
    """Drop every document whose normalised text (:func:`vichat.tiny.parts.normalize`) contains
    one of the ``protected`` texts (the instructions and responses of the records the adapters train,
    validate or are evaluated on); texts shorter than ``min_chars`` normalised characters are too
    generic to mean a leak and are not searched for.

    :returns: the kept documents, the first few removed (``"where: why"``), and how many were removed.
    """
    from bisect import bisect_right

    from .parts import normalize

    needles = sorted({n for n in map(normalize, protected) if len(n) >= min_chars}, key=len, reverse=True)
    if not needles or not docs:
        return list(docs), [], 0
    # One string with a separator no normalised text contains: each needle is searched once over
    # the whole corpus (a C-speed scan), and a hit is mapped back to its document by offset.
    sep = "\x00"
    norms = [normalize(d.text) for d in docs]
    starts, pos = [], 0
    for n in norms:
        starts.append(pos)
        pos += len(n) + 1
    joined = sep.join(norms)
    hit: dict[int, str] = {}
    for needle in needles:
        at = joined.find(needle)
        while at != -1:
            i = bisect_right(starts, at) - 1
            hit.setdefault(i, needle)
            at = joined.find(needle, at + 1)
    kept = [d for i, d in enumerate(docs) if i not in hit]
    removed = [f"{docs[i].where or docs[i].group}: contains protected text {hit[i][:60]!r}" for i in sorted(hit)]
    return kept, removed[:5], len(hit)


def _rank(group: str) -> int:
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big")


def split_documents(
    docs: Sequence[Document], holdout: float, max_train_chars: int, max_heldout_chars: int
) -> tuple[list[str], list[str]]:
    """Deterministic split by group hash: a group is held out when its hash falls in the lowest
    ``holdout`` fraction (at least one group is held out). Each side is capped by taking groups in
    hash order, so a capped corpus is an unbiased, reproducible subsample; texts keep corpus order."""
    groups: dict[str, list[int]] = {}
    for i, doc in enumerate(docs):
        groups.setdefault(doc.group, []).append(i)
    if len(groups) < 2:
        raise VichatError("the corpus needs at least two documents (records) to hold one out for perplexity")
    threshold = holdout * 2**64
    ranked = sorted(groups, key=_rank)
    held = {g for g in ranked if _rank(g) < threshold} or {ranked[0]}

    def take(names: list[str], cap: int) -> list[int]:
        chosen, chars = [], 0
        for g in names:
            if chars >= cap:
                break
            chosen.extend(groups[g])
            chars += sum(len(docs[i].text) for i in groups[g])
        return sorted(chosen)

    train_idx = take([g for g in ranked if g not in held], max_train_chars)
    held_idx = take([g for g in ranked if g in held], max_heldout_chars)
    return [docs[i].text for i in train_idx], [docs[i].text for i in held_idx]


def load_corpus(sources: Sequence[str], cfg: "TinyConfig", protected: Sequence[str] = ()) -> Corpus:
    """Read, decontaminate (against ``protected``, see :func:`decontaminate`), split and cap the
    corpus for ``cfg``."""
    docs, skipped, n_skipped = read_documents(sources)
    if not docs:
        raise VichatError(f"--corpus {', '.join(sources)}: no usable text (rows need a 'text' field or an "
                          "instruction/output pair)" + (f"; first problem: {skipped[0]}" if skipped else ""))
    docs, removed, n_removed = decontaminate(docs, protected)
    if not docs:
        raise VichatError(f"--corpus {', '.join(sources)}: every document contains text of the adapters' "
                          f"training or held-out records; first: {removed[0]}")
    train, heldout = split_documents(docs, cfg.holdout, cfg.max_train_chars, cfg.max_heldout_chars)
    return Corpus(train, heldout, fingerprint(sources), skipped, n_skipped, removed, n_removed)


# --------------------------------------------------------------------------- tokens


def encode_stream(tokenizer: Any, texts: Sequence[str], *, show: bool = True, desc: str = "tokenize") -> "torch.Tensor":
    """All ``texts`` as one token stream, each followed by EOS (what ends a response in fine-tuning)."""
    import torch
    from tqdm.auto import tqdm

    eos = tokenizer.eos_token_id
    ids: list[int] = []
    batch = 256
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not show, leave=False) as bar:
        for start in range(0, len(texts), batch):
            chunk = list(texts[start:start + batch])
            for seq in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                ids.extend(seq)
                ids.append(eos)
            bar.update(len(chunk))
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- model and loop


def make_model(tokenizer: Any, cfg: "TinyConfig", seed: int) -> Any:
    """A randomly initialised BLOOM model for ``tokenizer`` (``torch.manual_seed(seed)`` first)."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = BloomForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _batch(stream: "torch.Tensor", seq_len: int, batch_size: int, seed: int, step: int) -> "torch.Tensor":
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, len(stream) - seq_len + 1, (batch_size,), generator=g)
    return torch.stack([stream[o:o + seq_len] for o in offsets.tolist()])


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up, then cosine decay to ``floor`` x the peak at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class PretrainResult:
    """What the loop did: steps, tokens seen, time, loss curve (every ``log_every`` steps)."""

    steps: int
    tokens: int
    seconds: float
    final_loss: float
    losses: list[tuple[int, float]]
    resumed_from: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 2),
                "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds else None,
                "final_loss": round(self.final_loss, 4), "resumed_from_step": self.resumed_from,
                "loss_curve": [[s, round(v, 4)] for s, v in self.losses]}


CALIBRATION_STEPS = 10


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) and kill (SIGTERM) set a flag that the loop checks between steps, so a step
    is never cut in half and the checkpoint written on the way out is exact; a second signal
    interrupts at once. Outside the main thread (the demo builds in a thread) nothing changes."""
    hit: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if hit:
            raise KeyboardInterrupt
        hit.append(signum)

    for sig, before in previous.items():
        if before is not signal.SIG_IGN:  # a background job ignores SIGINT: keep it that way
            signal.signal(sig, handler)
    try:
        yield lambda: bool(hit)
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def pretrain(
    model: Any,
    stream: "torch.Tensor",
    cfg: "TinyConfig",
    seed: int,
    *,
    checkpoint: Path | None = None,
    on_step: StepHook | None = None,
    show: bool = True,
    echo: Callable[[str], None] = print,
) -> PretrainResult:
    """Train ``model`` on random ``cfg.seq_len`` windows of ``stream`` for ``cfg.steps`` steps, or for
    ``cfg.minutes`` of wall time (the step count is then fixed after timing the first steps).

    With ``checkpoint``, state is saved there every ``cfg.checkpoint_every`` steps and when the loop
    is interrupted, and a run that finds one resumes from it.
    """
    import torch
    from tqdm.auto import tqdm

    if len(stream) <= cfg.seq_len:
        raise VichatError(f"the training text is {len(stream)} tokens, shorter than one {cfg.seq_len}-token "
                          "window: pass a bigger --corpus")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]  # biases, LayerNorm
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.learning_rate, betas=(0.9, 0.95))
    total = cfg.steps if cfg.minutes is None else None
    start, losses, seconds_before = 0, [], 0.0
    if checkpoint is not None and (checkpoint / "state.pt").exists():
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, total, losses, seconds_before = state["step"], state["total"], state["losses"], state["seconds"]
        torch.set_rng_state(state["rng"])  # dropout masks continue exactly where the interrupted run was
        echo(f"base: resuming from the checkpoint at step {start}")

    rng = torch.get_rng_state()  # the generator's state at the last step boundary

    def save(step: int, elapsed: float) -> None:
        if checkpoint is None:
            return
        checkpoint.mkdir(parents=True, exist_ok=True)
        tmp = checkpoint / f".state.pt.tmp-{os.getpid()}"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "total": total,
                    "losses": losses, "seconds": elapsed, "rng": rng}, tmp)
        os.replace(tmp, checkpoint / "state.pt")  # a kill mid-save leaves the previous checkpoint intact

    model.train()
    t0 = time.perf_counter()
    step = start
    recent: list[float] = []
    planned = total or cfg.max_steps
    at_boundary = True  # False while a step is half done (weights or optimizer possibly half updated)
    bar = tqdm(total=planned, initial=start, desc="base", unit="step", disable=not show, dynamic_ncols=True)
    try:
        with deferred_interrupts() as interrupted:
            while total is None or step < total:
                if interrupted():
                    raise KeyboardInterrupt
                at_boundary = False
                for group in opt.param_groups:
                    group["lr"] = cfg.learning_rate * lr_factor(step, total or cfg.max_steps, cfg.warmup_steps,
                                                                cfg.min_lr_ratio)
                x = _batch(stream, cfg.seq_len, cfg.batch_size, seed, step)
                loss = model(input_ids=x, labels=x).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                rng = torch.get_rng_state()
                at_boundary = True
                value = loss.item()
                recent.append(value)
                if step % cfg.log_every == 0:
                    losses.append((step, sum(recent[-cfg.log_every:]) / len(recent[-cfg.log_every:])))
                if total is None and step == start + CALIBRATION_STEPS:
                    # --minutes: fix the step count now, so the schedule (and a resume) is exact from here on.
                    per_step = (time.perf_counter() - t0) / CALIBRATION_STEPS
                    total = max(step + 1, min(cfg.max_steps, int(cfg.minutes * 60 / per_step)))
                    bar.total = total
                    with bar.external_write_mode():  # a line of its own, not glued to the bar
                        echo(f"base: {per_step:.3f} s/step -> {total} steps fit in {cfg.minutes:g} min")
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}",
                                tok_s=f"{(step - start) * x.numel() / (time.perf_counter() - t0):.0f}")
                if on_step is not None:
                    on_step(step, total or planned, value)
                if checkpoint is not None and step % cfg.checkpoint_every == 0 and step < (total or 0):
                    save(step, seconds_before + time.perf_counter() - t0)
    except BaseException:
        # Ctrl-C, kill, or an exception from on_step: keep the finished steps for the rerun. A step
        # cut in half (a second Ctrl-C, an error inside it) is not saved: the last checkpoint stands.
        if step > start and at_boundary:
            save(step, seconds_before + time.perf_counter() - t0)
        raise
    finally:
        bar.close()
    model.eval()
    tail = recent[-cfg.log_every:] or [float("nan")]
    return PretrainResult(step, step * cfg.batch_size * cfg.seq_len, seconds_before + time.perf_counter() - t0,
                          sum(tail) / len(tail), losses, start)


# --------------------------------------------------------------------------- evaluation


def heldout_perplexity(
    model: Any, heldout: "torch.Tensor", train: "torch.Tensor", vocab_size: int, seq_len: int, chars: int
) -> dict[str, Any]:
    """Perplexity of ``model`` and of an add-one unigram model (train-split token counts, same
    tokenizer) on the same held-out tokens, and bits per character (comparable across tokenizers).

    Windows of ``seq_len`` overlap by one token, so every held-out token but the first is predicted
    exactly once, by both models.
    """
    import torch

    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0  # add-one smoothing
    log_p_unigram = torch.log(counts / counts.sum())
    stride = seq_len - 1
    windows = [heldout[i:i + seq_len] for i in range(0, max(1, len(heldout) - 1), stride)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise VichatError("the held-out text is too short to measure perplexity; pass a bigger --corpus")
    nll_model = nll_unigram = 0.0
    n = 0
    model.eval()
    with torch.inference_mode():
        for w in windows:  # one at a time: the last window is shorter, and held-out text is small
            logits = model(input_ids=w[None]).logits[0, :-1].float()
            targets = w[1:]
            nll_model += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            nll_unigram -= float(log_p_unigram[targets].sum())
            n += len(targets)
    ppl_model, ppl_unigram = math.exp(nll_model / n), math.exp(nll_unigram / n)
    return {
        "heldout_tokens": n,
        "heldout_chars": chars,
        "model_perplexity": round(ppl_model, 3),
        "unigram_perplexity": round(ppl_unigram, 3),
        "ratio": round(ppl_model / ppl_unigram, 4),
        "model_bits_per_char": round(nll_model / math.log(2) / chars, 4),
        "unigram_bits_per_char": round(nll_unigram / math.log(2) / chars, 4),
    }
