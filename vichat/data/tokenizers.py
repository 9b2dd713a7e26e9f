"""Tokenizers: train small byte-level BPE tokenizers, and load the one a model needs.

Two styles mirror the paper's base models, so code paths that differ between them (BOS, pad
token) are exercised offline on tokenizers that behave the same way:

``bloom``
    like BLOOM: ``<unk>`` (0), ``<s>`` BOS (1), ``</s>`` EOS (2), ``<pad>`` (3). Encoding adds no
    special token (BLOOM's tokenizer adds neither BOS nor EOS).
``gptj``
    like GPT-2 / GPT-J: one special token ``<|endoftext|>`` that is BOS, EOS and UNK, and **no pad
    token** (``pad_token is None``); training pads with EOS and masks labels by position.

Both use an NFC normalizer and byte-level pre-tokenizer/decoder: any text can be encoded (no
unknown characters) and Vietnamese round-trips exactly, ``decode(encode(s)) == nfc(s)``.

transformers and tokenizers are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..cache import cache_dir
from ..records import VichatError
from .templates import CHAT, DOCTOR, render_prompt

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast


@dataclass(frozen=True)
class TokenizerStyle:
    """Which special tokens a trained tokenizer has, and which role each plays."""

    special_tokens: tuple[str, ...]  # in id order, starting at 0
    unk: str
    bos: str
    eos: str
    pad: str | None


STYLES: dict[str, TokenizerStyle] = {
    "bloom": TokenizerStyle(("<unk>", "<s>", "</s>", "<pad>"), unk="<unk>", bos="<s>", eos="</s>", pad="<pad>"),
    "gptj": TokenizerStyle(("<|endoftext|>",), unk="<|endoftext|>", bos="<|endoftext|>", eos="<|endoftext|>", pad=None),
}

DEFAULT_STYLE = "bloom"
DEFAULT_VOCAB_SIZE = 4000
SAMPLE_FILES = ("sample/general.jsonl", "sample/medical.jsonl")
# Bump when train_bpe_tokenizer changes in a way that changes its output: old caches are ignored.
_FORMAT_VERSION = "1"


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    style: str = DEFAULT_STYLE,
    *,
    min_frequency: int = 2,
    max_texts: int | None = None,
    seed: int = 0,
    model_max_length: int = 2048,
) -> "PreTrainedTokenizerFast":
    """Train a byte-level BPE tokenizer on ``texts``; the same inputs give the same tokenizer.

    :param texts: training text; each item is NFC-normalised by the tokenizer itself.
    :param vocab_size: target size including the 256 byte symbols and the special tokens (the
        result is smaller when the text has fewer distinct merges).
    :param style: ``"bloom"`` or ``"gptj"`` (see the module docstring).
    :param min_frequency: a pair must occur this often to be merged.
    :param max_texts: train on a random subset of this many texts (drawn with ``seed``) — BPE
        training itself has no randomness, ``seed`` only matters here.
    :param model_max_length: stored as the tokenizer's ``model_max_length``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in STYLES:
        raise ValueError(f"unknown tokenizer style {style!r}; choose one of {', '.join(STYLES)}")
    st = STYLES[style]
    corpus = [t for t in texts if t]
    if max_texts is not None and len(corpus) > max_texts:
        corpus = random.Random(seed).sample(corpus, max_texts)
    if not corpus:
        raise ValueError("train_bpe_tokenizer needs at least one non-empty text")

    backend = Tokenizer(models.BPE())  # byte-level: every byte is in the vocab, so no unk is needed
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(st.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer, length=len(corpus))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=st.unk,
        bos_token=st.bos,
        eos_token=st.eos,
        pad_token=st.pad,
        add_bos_token=False,  # like BLOOM and GPT-J: encode() adds no special tokens
        add_eos_token=False,
        padding_side="right",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,  # would change text on decode (" ." -> ".")
    )


# --------------------------------------------------------------------------- loading


def sample_texts() -> list[str]:
    """Texts of the bundled sample records plus the paper's templates (so the default tokenizer
    learns the ``### Instruction:`` / ``### Response:`` markers as compact tokens)."""
    texts = [render_prompt(CHAT, ""), render_prompt(DOCTOR, "")]
    from .readers import bundled_rows

    for name in SAMPLE_FILES:
        for _, row in bundled_rows(name):
            texts.extend(str(row[k]) for k in ("instruction", "input", "output") if row.get(k))
    return texts


def default_tokenizer(
    texts: Iterable[str] | None = None,
    *,
    style: str = DEFAULT_STYLE,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> "PreTrainedTokenizerFast":
    """The project's default tokenizer, trained on ``texts`` (default: :func:`sample_texts`).

    The result is cached under ``<cache_dir>/tokenizers/default-<hash>``, keyed by a hash of every
    input (texts, style, vocab size, tokenizers version), so a later call only loads it.
    """
    import tokenizers
    from transformers import AutoTokenizer

    corpus = list(sample_texts() if texts is None else texts)
    h = hashlib.sha256()
    for part in (_FORMAT_VERSION, tokenizers.__version__, style, str(vocab_size)):
        h.update(part.encode() + b"\x00")
    for t in corpus:
        h.update(t.encode("utf-8") + b"\x00")
    target = cache_dir() / "tokenizers" / f"default-{h.hexdigest()[:16]}"
    if (target / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(target))

    tok = train_bpe_tokenizer(corpus, vocab_size=vocab_size, style=style)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary folder and rename it into place: a reader never sees half a tokenizer,
    # and two processes building it at once both end up with the same complete folder.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        tok.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError:
        if not (target / "tokenizer.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def _from_pretrained(name_or_path: str, what: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:  # noqa: BLE001 - hub, file and format errors all end the same way
        if Path(name_or_path).is_dir():
            raise VichatError(
                f"{name_or_path}: cannot load a tokenizer from this folder ({type(exc).__name__}: {exc}); "
                "it should hold tokenizer.json or the files of tokenizer.save_pretrained()"
            ) from exc
        raise VichatError(
            f"cannot load the tokenizer {what}{name_or_path!r} from the Hugging Face hub: the hub is "
            f"unreachable or has no such repository ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pass a local tokenizer directory instead (one saved with save_pretrained), or run "
            "without a name to use vichat's default tokenizer"
        ) from exc


def load_tokenizer(name_or_path: str | None = None, *, registry: Any = None,
                   base_path: str | Path | None = None) -> "PreTrainedTokenizerBase":
    """Load a tokenizer by what ``name_or_path`` is.

    - ``None``: the project's default tokenizer (:func:`default_tokenizer`, cached on disk), or the
      one in ``base_path``;
    - an existing local directory: ``AutoTokenizer.from_pretrained(path)``;
    - a base-model name registered in ``registry`` (the caller's plugin registry): the tokenizer of
      its weights in ``base_path`` when given, else the one its own loader returns when the spec has
      one (``tiny``: the cached build's), else its spec's ``hub_id`` (the default tokenizer when the
      spec has no hub id), with :func:`vichat.models.apply_tokenizer_fixes` applied;
    - anything else: a hub id. Offline, this raises :class:`VichatError` saying to pass a local
      directory.
    """
    from ..models import apply_tokenizer_fixes

    folder = Path(base_path).expanduser() if base_path is not None else None
    if folder is not None and not folder.is_dir():
        raise VichatError(f"--base-path {base_path}: no such folder")
    if name_or_path is None:
        return _from_pretrained(str(folder), "") if folder is not None else default_tokenizer()
    if Path(name_or_path).expanduser().is_dir():
        return _from_pretrained(str(Path(name_or_path).expanduser()), "")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        # A hub id is "name" or "owner/name"; this can only have been meant as a path.
        raise VichatError(f"{name_or_path}: no such tokenizer directory")
    spec = None
    if registry is not None and name_or_path in registry.names("base_models"):
        spec = registry.base_model(name_or_path)
    if spec is None:
        return _from_pretrained(str(folder) if folder is not None else name_or_path, "")
    if folder is not None:
        tok = _from_pretrained(str(folder), f"of base model {spec.name!r}, ")
    elif spec.load is not None:
        # A custom loader knows where its files are (the tiny model's live in the build cache);
        # its hub_id may be a placeholder that no hub serves.
        from ..models import load_base

        _, tok = load_base(spec)
    elif spec.hub_id:
        tok = _from_pretrained(spec.hub_id, f"of base model {spec.name!r}, ")
    else:
        tok = default_tokenizer()
    return apply_tokenizer_fixes(tok, spec)
