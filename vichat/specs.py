"""What plugins register: one frozen dataclass per kind of component.

Every spec carries a unique ``name`` (``^[a-z0-9][a-z0-9._-]*$``: names end up in stored votes and
reports) and a one-line ``description``. ``validate()`` raises :class:`SpecError` with the field at
fault; the plugin manager calls it on everything a plugin registers.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .records import Record

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class SpecError(ValueError):
    """A registered spec is invalid; the message names the field and what is expected."""


def _check_common(spec: Any) -> None:
    kind = type(spec).__name__
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpecError(
            f"{kind}.name={name!r} is invalid: use lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    desc = getattr(spec, "description", None)
    if not isinstance(desc, str) or not desc.strip():
        raise SpecError(f"{kind} {name!r}: description must be a non-empty string")
    if "\n" in desc.strip():
        raise SpecError(f"{kind} {name!r}: description must be one line")


def _check_callable(spec: Any, attr: str, required: bool = True) -> None:
    value = getattr(spec, attr)
    if value is None and not required:
        return
    if not callable(value):
        raise SpecError(f"{type(spec).__name__} {spec.name!r}: {attr} must be callable, got {value!r}")


#: Options that change how a request travels, not what comes back: never part of a cache key.
TRANSPORT_OPTIONS = frozenset({"base_url", "timeout", "api_key", "max_retries"})


def _check_options(spec: Any, reserved: Sequence[str]) -> None:
    """``options``: a mapping of option names (``--option NAME=VALUE``) to their defaults."""
    options = spec.options
    if not isinstance(options, Mapping) or not all(isinstance(k, str) and k for k in options):
        raise SpecError(f"{type(spec).__name__} {spec.name!r}: options must map option names to their defaults, "
                        f"got {options!r}")
    clash = sorted(set(options) & set(reserved))
    if clash:
        raise SpecError(f"{type(spec).__name__} {spec.name!r}: options may not redefine {', '.join(clash)} "
                        f"(vichat always passes {', '.join(reserved)})")


def _check_str_tuple(spec: Any, attr: str) -> None:
    value = getattr(spec, attr)
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise SpecError(
            f"{type(spec).__name__} {spec.name!r}: {attr} must be a sequence of strings, got {value!r}"
        )


# --------------------------------------------------------------------------- datasets


@dataclass(frozen=True, slots=True)
class Row:
    """One raw row read from a file, with where it came from (``"path:line"``)."""

    location: str
    data: Mapping[str, Any]


#: A dataset loader yields raw rows (mapped to records through ``field_map``) or finished records.
DatasetItem = Union[Row, Record]

DEFAULT_FIELD_MAP: Mapping[str, tuple[str, ...]] = {
    "instruction": ("instruction", "prompt"),
    "input": ("input",),
    "output": ("output", "response"),
    "id": ("id",),
}


@dataclass(frozen=True)
class DatasetSpec:
    """An instruction dataset.

    ``load(path, subset=None)`` yields :class:`Row` or :class:`Record` items. With ``path=None``
    it fetches the public data from ``source`` (a hub id or URL); without network it must raise
    :class:`vichat.records.VichatError` saying to pass a local file or folder.
    """

    name: str
    description: str
    load: Callable[..., Iterable[DatasetItem]]
    languages: Sequence[str] = ("vi",)
    license: str = ""
    citation: str = ""
    source: str = ""
    homepage: str = ""
    subsets: Sequence[str] = ()
    domain: str = "general"
    field_map: Mapping[str, Sequence[str]] = field(default_factory=lambda: dict(DEFAULT_FIELD_MAP))

    def validate(self) -> None:
        _check_common(self)
        _check_callable(self, "load")
        _check_str_tuple(self, "languages")
        _check_str_tuple(self, "subsets")
        if not self.languages:
            raise SpecError(f"DatasetSpec {self.name!r}: languages must name at least one language")
        for key in ("instruction", "output"):
            if key not in self.field_map:
                raise SpecError(f"DatasetSpec {self.name!r}: field_map lacks {key!r}")


# --------------------------------------------------------------------------- base models


# Accepted ``Architecture.family`` values ("gpt-j", "GPT_J" and "gptj" are the same). Each but
# "other" has a module-shape table (vichat/train/shapes.py), so a dry run can count LoRA parameters
# and estimate memory without weights; "other" trains and serves, but its dry run cannot count.
FAMILIES: tuple[str, ...] = ("bloom", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "gpt2", "other")


def family_key(family: str) -> str:
    """``family`` compared without case, ``-`` or ``_`` ("GPT-J" -> "gptj")."""
    return family.lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class Architecture:
    """The shape numbers a dry run needs without downloading weights; ``family`` is one of FAMILIES."""

    family: str
    n_layers: int
    hidden_size: int
    n_heads: int
    vocab_size: int
    intermediate_size: int = 0
    max_positions: int = 2048
    n_params: int = 0
    n_kv_heads: int = 0  # grouped-query attention (Llama 2/3, Mistral); 0 means n_heads

    def __post_init__(self) -> None:
        if not self.intermediate_size:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)


def _setting(default: Any, help: str, label: str, low: float, high: float, step: float,
             valid: tuple[float, float | None]) -> Any:
    """A decoding field with what every surface needs to offer it: the CLI flag's help, the app's
    Vietnamese label, the range (and slider step) a public visitor's value is clamped to, and the
    values that make sense at all (``valid``: minimum, maximum or None), which the CLI accepts."""
    return field(default=default, metadata={"help": help, "label": label, "range": (low, high), "step": step,
                                            "valid": valid})


@dataclass(frozen=True)
class Decoding:
    """Sampling settings; the defaults are the paper's (section IV-C).

    The one description of decoding: CLI flags (:func:`vichat.clitools.decoding_options`), the
    app's sliders and their server-side clamp (:mod:`vichat.app.controls`) are all made from these
    fields and their metadata (:func:`decoding_fields`).
    """

    max_new_tokens: int = _setting(256, "Longest answer in tokens.", "Số token tối đa (max_new_tokens)", 1, 1024, 1,
                                   (1, None))
    temperature: float = _setting(0.5, "Sampling temperature; 0 = greedy.", "Nhiệt độ (temperature)", 0.0, 1.5, 0.05,
                                  (0, None))
    top_k: int = _setting(20, "Sample from the k likeliest tokens; 0 = all.", "top_k", 0, 100, 1, (0, None))
    top_p: float = _setting(1.0, "Nucleus sampling: the smallest set of tokens with this much probability.",
                            "top_p", 0.05, 1.0, 0.05, (0, 1))
    repetition_penalty: float = _setting(1.2, "Penalty on tokens already in the text (1.0 = none).",
                                         "Phạt lặp từ (repetition_penalty)", 1.0, 2.0, 0.05, (0, None))

    def as_generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``generate``; temperature 0 means greedy decoding."""
        sample = self.temperature > 0
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": sample,
                                  "repetition_penalty": self.repetition_penalty}
        if sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


def decoding_fields() -> list[Any]:
    """The fields of :class:`Decoding` (``dataclasses.Field``: ``name``, ``type``, ``default``,
    ``metadata["help" | "label" | "range" | "step" | "valid"]``), in order."""
    return list(fields(Decoding))


@dataclass(frozen=True)
class BaseModelSpec:
    """A base model LoRA adapters are trained on.

    ``load(spec, path_or_id=None, **options)`` returns ``(model, tokenizer)`` and imports torch and
    transformers lazily; left as ``None`` it is :func:`vichat.models.load_causal_lm` (transformers'
    ``AutoModelForCausalLM``, from a hub id or a local directory alike, optionally in 8-bit or 4-bit).
    Load through :func:`vichat.models.load_base` (or :func:`vichat.models.load`), which picks the one
    that applies; a spec is plain data and loads nothing itself. ``pad_token="eos"`` means the tokenizer has no pad token and EOS is used
    (labels are then masked by position, never by pad id).

    ``adapters(spec, registry, progress=None) -> {name: folder}``: LoRA adapters the plugin provides
    for this base by name, made ready on demand (the ``tiny`` model builds ``tiny-chat`` and
    ``tiny-doctor``); a models YAML may then name them in ``adapter:``. The serving engine calls it
    when the base's files come from the plugin (no ``base_path``), with its plugin registry and a
    ``progress(stage, fraction, message)`` callback.
    """

    name: str
    description: str
    hub_id: str
    architecture: Architecture
    lora_targets: Sequence[str]
    load: Callable[..., Any] | None = None
    adapters: Callable[..., Mapping[str, str]] | None = None
    default_template: str = "chat"
    templates: Sequence[str] = ("chat", "doctor")
    decoding: Decoding = field(default_factory=Decoding)
    pad_token: str | None = None
    padding_side: str = "right"
    license: str = ""

    def validate(self) -> None:
        _check_common(self)
        _check_callable(self, "load", required=False)
        _check_callable(self, "adapters", required=False)
        _check_str_tuple(self, "lora_targets")
        _check_str_tuple(self, "templates")
        if not isinstance(self.hub_id, str):
            raise SpecError(f"BaseModelSpec {self.name!r}: hub_id must be a string")
        if not isinstance(self.architecture, Architecture):
            raise SpecError(f"BaseModelSpec {self.name!r}: architecture must be an Architecture")
        family = self.architecture.family
        known = {family_key(f) for f in FAMILIES}
        if not isinstance(family, str) or family_key(family) not in known:
            close = difflib.get_close_matches(family_key(str(family)), sorted(known), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SpecError(
                f"BaseModelSpec {self.name!r}: architecture.family={family!r} is not a known family.{hint} "
                f"Accepted: {', '.join(FAMILIES)} ('other' for an architecture without a shape table: "
                "it trains and serves, but a dry run cannot count its LoRA parameters)."
            )
        if not self.lora_targets:
            raise SpecError(f"BaseModelSpec {self.name!r}: lora_targets must name at least one module")
        if self.padding_side not in ("left", "right"):
            raise SpecError(f"BaseModelSpec {self.name!r}: padding_side must be 'left' or 'right'")


# --------------------------------------------------------------------------- translators


@dataclass(frozen=True)
class TranslatorSpec:
    """A machine translator.

    ``translate(texts, source, target, **options) -> list[str]``: a batch in, a batch of the same
    length and order out. Raise :class:`vichat.retry.RetryableError` (optionally with
    ``retry_after``) for 429/5xx/timeouts so the job retries with backoff,
    :class:`vichat.translate.errors.FatalTranslatorError` (bad key, no quota) to stop the whole run
    cleanly; any other exception marks the batch failed. ``env_vars`` lists the environment
    variables it reads.

    ``options`` is the contract for ``--option NAME=VALUE``: every option ``translate`` takes, with
    its default. ``translate`` is always called with all of them (the user's values over the
    defaults); an option not listed is refused before anything is sent. All but the transport ones
    (:data:`TRANSPORT_OPTIONS`) are part of the cache key, defaults included, so a plugin's default
    model is part of what a cached translation means.
    """

    name: str
    description: str
    translate: Callable[..., list[str]]
    env_vars: Sequence[str] = ()
    max_batch_size: int = 64
    max_batch_chars: int = 20_000
    cost_per_million_chars: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    #: ``check_options(options)``: called once per run with every option (strings already converted to
    #: the defaults' types) before anything is sent; raises ``ValueError`` for a value no request can
    #: succeed with (``temperature=5``), which becomes one ``error:`` line.
    check_options: Callable[[dict], None] | None = None

    def validate(self) -> None:
        _check_common(self)
        _check_callable(self, "translate")
        if self.check_options is not None:
            _check_callable(self, "check_options")
        _check_options(self, ("texts", "source", "target"))
        _check_str_tuple(self, "env_vars")
        if self.max_batch_size < 1 or self.max_batch_chars < 1:
            raise SpecError(f"TranslatorSpec {self.name!r}: batch limits must be positive")


# --------------------------------------------------------------------------- judges


@dataclass(frozen=True)
class JudgeResult:
    """Scores for assistant 1 and 2 (``None`` when the judge's text could not be read)."""

    score1: float | None
    score2: float | None
    raw: str
    aspects: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score1 is not None and self.score2 is not None


#: The judge's sampling temperature and longest review unless the user says otherwise (FastChat's
#: reviewer settings, which the paper used): the CLI, the app and the job read them from here.
JUDGE_TEMPERATURE = 0.2
JUDGE_MAX_TOKENS = 1024
#: The keywords every judge is called with (besides its own ``options``).
JUDGE_KEYWORDS = ("model", "temperature", "max_tokens", "aspects", "policy", "registry")


@dataclass(frozen=True)
class JudgeSpec:
    """A pairwise judge: ``judge(question, answer1, answer2, prompt, *, model, temperature, max_tokens,
    aspects, policy, registry, **options) -> JudgeResult``.

    vichat always passes the six named keywords (``model``: the user's ``--judge-model``, else
    ``default_model``; ``registry``: the plugin registry of the run, where a judge that runs a
    registered base model finds it) and every option in ``options`` (the contract for ``--option NAME=VALUE``:
    each option the judge takes, with its default; one not listed is refused before anything is
    sent). ``uses_policy``: ``True`` when ``judge`` sends each request through
    ``converse(send, ..., policy=policy)``, so rate limits, retries and cost apply per request;
    ``False`` (the default), ``policy`` is ``None`` and vichat rate-limits, retries and counts the
    whole call as one request.

    ``price`` is ``(input, output)`` US dollars per million tokens: ``(0, 0)`` for a judge that costs
    nothing per request (a model run locally), ``None`` to look the judge model up in the known
    list prices (``--price-in``/``--price-out`` override either).
    """

    name: str
    description: str
    judge: Callable[..., JudgeResult]
    env_vars: Sequence[str] = ()
    default_model: str = ""
    price: tuple[float, float] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    uses_policy: bool = False

    def validate(self) -> None:
        _check_common(self)
        _check_callable(self, "judge")
        _check_options(self, JUDGE_KEYWORDS)
        if not isinstance(self.uses_policy, bool):
            raise SpecError(f"JudgeSpec {self.name!r}: uses_policy must be True or False")
        _check_str_tuple(self, "env_vars")
        if self.price is not None and (
            len(tuple(self.price)) != 2 or not all(isinstance(x, (int, float)) and x >= 0 for x in self.price)
        ):
            raise SpecError(f"JudgeSpec {self.name!r}: price must be None or (input, output) USD per million "
                            f"tokens, both >= 0; got {self.price!r}")


# --------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class TemplateSpec:
    """A prompt template.

    ``prompt`` contains ``{instruction}`` once and ends right where the response starts. When a
    record has an ``input``, ``input_format`` (with ``{instruction}`` and ``{input}``) builds the
    text substituted for ``{instruction}``. ``stop`` lists markers that end generation.
    """

    name: str
    description: str
    prompt: str
    input_format: str = "{instruction}\n\n{input}"
    stop: Sequence[str] = ("### Instruction:",)

    def validate(self) -> None:
        _check_common(self)
        if self.prompt.count("{instruction}") != 1:
            raise SpecError(f"TemplateSpec {self.name!r}: prompt must contain {{instruction}} exactly once")
        for key in ("{instruction}", "{input}"):
            if key not in self.input_format:
                raise SpecError(f"TemplateSpec {self.name!r}: input_format must contain {key}")
        _check_str_tuple(self, "stop")


# --------------------------------------------------------------------------- judge prompts


@dataclass(frozen=True)
class JudgePromptsSpec:
    """A set of versioned judge prompts: ``path`` is a ``.jsonl`` file or a folder of them.

    The file format is described in :mod:`vichat.evaluate.prompts`; each prompt in the files names
    the ``set`` it belongs to (what ``vichat eval judge`` selects), usually ``name``.
    """

    name: str
    description: str
    path: str

    def validate(self) -> None:
        _check_common(self)
        if not isinstance(self.path, str) or not self.path:
            raise SpecError(f"JudgePromptsSpec {self.name!r}: path must be a file or folder path (str)")


KINDS: dict[str, type] = {
    "datasets": DatasetSpec,
    "base_models": BaseModelSpec,
    "translators": TranslatorSpec,
    "judges": JudgeSpec,
    "templates": TemplateSpec,
    "judge_prompts": JudgePromptsSpec,
}
