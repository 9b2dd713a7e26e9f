"""Training data for the loop: the prepared folder, tokenised examples, and the batch plan.

The plan is a pure function of ``(examples, settings, seed, epoch)``: every process of a
multi-process run computes the same plan and takes its own share, and a resumed run recomputes the
order it was in. Nothing here imports torch.

How an epoch is cut (``micro`` = examples per forward pass, ``accumulation`` = forward passes per
process per optimizer step, ``world`` = processes):

1. units (examples, or packs of examples with ``packing``) are put in an order: length-grouped
   (``group_by_length``), or shuffled, seeded with ``seed + epoch``;
2. the order is cut into micro-batches of ``micro`` units;
3. consecutive runs of ``accumulation x world`` micro-batches form one optimizer step; process
   ``r`` takes micro-batches ``r, r + world, ...`` of each step. The last step of an epoch may be
   shorter; a process left without a micro-batch runs a *dummy* one with loss weight 0, so every
   process makes the same number of forward/backward passes (DeepSpeed's collectives must match).

With the same ``micro``, a one-process run (accumulation ``A x W``) and a ``W``-process run
(accumulation ``A``) see exactly the same examples in every step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.prepare import MANIFEST_FILE, TRAIN_FILE, VALIDATION_FILE, prepare, read_manifest
from ..data.tokenize import IGNORE_INDEX, length_grouped_batches, pack_examples
from ..records import Record, VichatError

BATCHING = ("length", "random", "packed")


# --------------------------------------------------------------------------- the prepared folder


@dataclass
class TrainingData:
    """The records of a prepared folder and what describes them (for the model card)."""

    folder: Path
    train: list[Record]
    validation: list[Record]
    manifest: dict[str, Any]
    manifest_sha256: str

    def describe(self) -> dict[str, Any]:
        """Counts, mixture and hashes: what the model card and the checkpoint fingerprint record."""
        files = self.manifest.get("files", {})
        return {
            "folder": str(self.folder),
            "mixture": self.manifest.get("mixture"),
            "train_records": len(self.train),
            "validation_records": len(self.validation),
            "manifest_sha256": self.manifest_sha256,
            "train_sha256": files.get(TRAIN_FILE, {}).get("sha256"),
            "sources": [
                {k: s.get(k) for k in ("key", "dataset", "used", "read", "limit")}
                for s in self.manifest.get("sources", [])
            ],
        }


def is_prepared_dir(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / TRAIN_FILE).is_file()


def ensure_prepared(data: str, output_dir: Path, *, seed: int, template: str, registry: Any,
                    resuming: bool = False) -> Path:
    """The prepared folder for ``data``: itself when it is one, else ``output_dir/data`` built from
    a mixture name (``sample-chat``), a registered dataset (``vi-sample-chat``) or a file.

    Building is idempotent: the folder is reused when its manifest says it was built from the same
    reference and seed (a resumed run must see the same records). ``registry``: where a dataset
    name is looked up (the caller's). ``resuming``: a folder built from other data belongs to the
    run being resumed; it is not rebuilt, the resume is refused."""
    if is_prepared_dir(data):
        return Path(data).expanduser()
    from ..data.mixtures import MIXTURES

    target = output_dir / "data"
    if (target / MANIFEST_FILE).is_file():
        built = json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8")).get("vichat_train_ref")
        if built == {"data": data, "seed": seed}:
            return target
        if resuming:
            was = f"--data {built.get('data')} (seed {built.get('seed')})" if isinstance(built, dict) else "other data"
            raise VichatError(
                f"--resume: {target} holds the records of the run being resumed, prepared from {was}; this run asks "
                f"for --data {data} (seed {seed}). Resuming with other data is refused and the folder is left as it "
                "is: resume with the original --data, or start a new run in another --output-dir"
            )
    if data in MIXTURES:
        manifest = prepare(target, mixture=data, seed=seed, template=template, registry=registry)
    else:
        manifest = prepare(target, datasets=[data], seed=seed, template=template, registry=registry)
    # Remember what the folder was built from, so a later run with other data rebuilds it.
    manifest["vichat_train_ref"] = {"data": data, "seed": seed}
    from ..data.prepare import write_json_atomic

    write_json_atomic(target / MANIFEST_FILE, manifest)
    return target


def data_report(data: TrainingData, train_examples: Sequence[Mapping[str, Any]], max_length: int, *,
                large_share: float = 0.25) -> tuple[list[str], list[str]]:
    """What the run's opening lines say about its data: ``(notes, warnings)``.

    Notes: records the preparation removed (duplicates) or dropped (invalid rows, code broken by
    translation, untranslated, over a limit) and where they are listed, and the training records
    cut to ``max_length``. Warnings: more than ``large_share`` of them cut; a validation set of
    0 or 1 record (its loss says little or nothing)."""
    notes: list[str] = []
    warnings: list[str] = []
    counts = data.manifest.get("counts", {}) if data.manifest else {}
    removed = [f"{n} {what}" for key, what in (
        ("duplicates_removed", "duplicates removed"),
        ("skipped_invalid", "invalid rows skipped"),
        ("dropped_corrupted_code", "dropped for code broken by translation"),
        ("dropped_untranslated", "dropped as untranslated"),
        ("dropped_by_limit", "left out by a --limit"),
    ) if (n := int(counts.get(key) or 0))]
    if removed:
        listed = data.folder / "skipped.jsonl"
        where = (f"; the dropped ones are listed in {listed}" if listed.is_file() else "") + \
            f"; counts in {data.folder / MANIFEST_FILE}"
        notes.append(f"data: {', '.join(removed)} when {data.folder} was prepared{where}")
    n = len(train_examples)
    cut = sum(1 for e in train_examples if e.get("truncated"))
    if cut:
        share = cut / n if n else 0.0
        text = (f"{cut} of {n} training records ({100 * share:.0f}%) are longer than --max-length {max_length} "
                "and are cut to it (the response's end is lost; the EOS is kept)")
        if share > large_share:
            warnings.append(f"{text}: that is a large share; raise --max-length, or check the data")
        else:
            notes.append(f"data: {text}")
    if len(data.validation) <= 1:
        what = "no validation records" if not data.validation else "only 1 validation record"
        warnings.append(f"{what} in {data.folder / VALIDATION_FILE}: the validation loss "
                        + ("is not computed" if not data.validation else "says little")
                        + "; prepare the data with a larger validation split (`vichat data prepare --val-size`)")
    return notes, warnings


def _read_records(path: Path) -> list[Record]:
    records: list[Record] = []
    if not path.exists():
        return records
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(Record.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise VichatError(f"{path}:{lineno}: not a prepared record ({exc}); rebuild the folder with "
                                  "`vichat data prepare`") from None
    return records


def load_prepared(folder: str | Path) -> TrainingData:
    """Read ``folder/train.jsonl`` and ``validation.jsonl`` (checked against the manifest's sha256)."""
    folder = Path(folder).expanduser()
    if not (folder / TRAIN_FILE).is_file():
        raise VichatError(f"{folder}: no {TRAIN_FILE}; build it with `vichat data prepare --out {folder}`")
    manifest: dict[str, Any] = {}
    digest = ""
    if (folder / MANIFEST_FILE).is_file():
        manifest = read_manifest(folder, verify=True)
        digest = hashlib.sha256((folder / MANIFEST_FILE).read_bytes()).hexdigest()
    train = _read_records(folder / TRAIN_FILE)
    if not train:
        raise VichatError(f"{folder / TRAIN_FILE}: no records to train on")
    return TrainingData(folder, train, _read_records(folder / VALIDATION_FILE), manifest, digest)


# --------------------------------------------------------------------------- tokenising


#: Bumped when what :func:`tokenize_all` produces changes, so older cache files are not read.
TOKENIZE_VERSION = 1


def tokenize_cache_dir() -> Path:
    """``$VICHAT_CACHE_DIR/tokenized`` (``VICHAT_CACHE_DIR`` defaults to ``~/.cache/vichat``)."""
    root = os.environ.get("VICHAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vichat")
    return Path(root) / "tokenized"


def tokenize_key(records: Sequence[Record], tokenizer: Any, template: Any, max_length: int) -> str:
    """What the tokenised examples depend on, hashed: the records' text, the tokenizer (its full
    definition for a fast tokenizer), the template (its rendering) and ``max_length``."""
    from ..data.templates import render_prompt
    from ..data.tokenize import resolve_template

    h = hashlib.sha256()
    h.update(json.dumps([TOKENIZE_VERSION, max_length]).encode())
    tpl = resolve_template(template)
    h.update(json.dumps([tpl.name, render_prompt(tpl, "\x00I", "\x00X"), render_prompt(tpl, "\x00I", "")]).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    h.update(spec.encode())
    h.update(json.dumps([type(tokenizer).__name__, tokenizer.eos_token_id, tokenizer.bos_token_id,
                         bool(getattr(tokenizer, "add_bos_token", False))]).encode())
    for r in records:
        h.update(json.dumps([r.instruction, r.input, r.output], ensure_ascii=False).encode())
    return h.hexdigest()[:32]


def tokenize_all(records: Sequence[Record], tokenizer: Any, template: Any, max_length: int, *,
                 cache: bool = True) -> list[dict[str, Any]]:
    """Every record tokenised (input ids, labels masked on the prompt, EOS last), in batched
    tokenizer calls (:func:`vichat.data.tokenize.tokenize_records`), cached under
    :func:`tokenize_cache_dir` by :func:`tokenize_key`: a rerun or a resume reads the cache."""
    from ..data.tokenize import tokenize_records

    path = tokenize_cache_dir() / f"{tokenize_key(records, tokenizer, template, max_length)}.jsonl" if cache else None
    if path is not None and path.is_file():
        with path.open(encoding="utf-8") as fh:
            examples = [json.loads(line) for line in fh]
        if len(examples) == len(records):
            return examples
    try:
        examples = tokenize_records(records, tokenizer, template, max_length)
    except ValueError as exc:  # e.g. max_length shorter than the template itself
        raise VichatError(f"--max-length {max_length}: {exc}") from None
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with tmp.open("w", encoding="utf-8") as fh:
                for e in examples:
                    fh.write(json.dumps(e) + "\n")
            os.replace(tmp, path)  # atomic: another process never reads half a file
        except OSError:
            pass  # a read-only cache only costs the time to tokenise again
    return examples


def label_tokens(example: Mapping[str, Any]) -> int:
    """Tokens the loss counts in ``example``: labels that are not ``-100``, after the shift (the first
    position predicts nothing). The loss of a step is averaged over exactly these."""
    return sum(1 for t in list(example["labels"])[1:] if t != IGNORE_INDEX)


def input_tokens(example: Mapping[str, Any]) -> int:
    """Useful (non-padding) tokens of ``example``: what tokens/s counts."""
    return len(example["input_ids"])


def make_units(examples: list[dict[str, Any]], mode: str, max_length: int) -> list[dict[str, Any]]:
    """What a micro-batch is made of: the examples, or packs of them (``mode == "packed"``)."""
    if mode not in BATCHING:
        raise ValueError(f"unknown batching mode {mode!r}")
    return pack_examples(examples, max_length) if mode == "packed" else examples


# --------------------------------------------------------------------------- the batch plan


@dataclass(frozen=True)
class Step:
    """One optimizer step: its micro-batches (unit indices, in order, all processes together)."""

    micro_batches: tuple[tuple[int, ...], ...]
    label_tokens: int
    input_tokens: int

    def for_rank(self, rank: int, world: int) -> list[tuple[int, ...] | None]:
        """The micro-batches process ``rank`` runs; ``None`` marks a dummy (loss weight 0) pass."""
        rounds = math.ceil(len(self.micro_batches) / world)
        return [
            self.micro_batches[i * world + rank] if i * world + rank < len(self.micro_batches) else None
            for i in range(rounds)
        ]


def order_micro_batches(lengths: Sequence[int], micro: int, mode: str, seed: int) -> list[list[int]]:
    """Micro-batches of unit indices for one epoch (``seed`` already includes the epoch)."""
    if mode == "length":
        return length_grouped_batches(lengths, batch_size=micro, seed=seed)
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [order[i : i + micro] for i in range(0, len(order), micro)]


def epoch_steps(
    units: Sequence[Mapping[str, Any]],
    *,
    micro: int,
    accumulation: int,
    world: int,
    mode: str,
    seed: int,
    epoch: int,
) -> list[Step]:
    """The optimizer steps of epoch ``epoch`` (see the module docstring)."""
    lengths = [input_tokens(u) for u in units]
    batches = order_micro_batches(lengths, micro, mode, seed + epoch)
    per_step = accumulation * world
    steps = []
    for s in range(0, len(batches), per_step):
        group = tuple(tuple(b) for b in batches[s : s + per_step])
        steps.append(
            Step(
                micro_batches=group,
                label_tokens=sum(label_tokens(units[i]) for b in group for i in b),
                input_tokens=sum(lengths[i] for b in group for i in b),
            )
        )
    return steps


def steps_per_epoch(n_units: int, micro: int, accumulation: int, world: int) -> int:
    """``ceil(ceil(units / micro) / (accumulation x world))``: the length of :func:`epoch_steps`."""
    return max(1, math.ceil(math.ceil(n_units / micro) / (accumulation * world)))


def eval_batches(examples: Sequence[Mapping[str, Any]], batch_size: int) -> list[list[int]]:
    """Validation micro-batches: length-grouped without shuffling, so every evaluation is the same."""
    if not examples:
        return []
    return length_grouped_batches([input_tokens(e) for e in examples], batch_size=batch_size, shuffle=False)


def plan_fingerprint(values: Mapping[str, Any]) -> str:
    """A short hash of everything that decides the training trajectory (checked on resume)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]

