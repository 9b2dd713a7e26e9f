"""The local backend: one base model in memory serving several LoRA adapters, streaming.

``LocalEngine(config)`` is cheap: it only reads the configuration. The weights load on
:meth:`LocalEngine.prepare` (the app calls it at start-up in a thread, with a progress callback) or
on the first request. All models of one engine share one base: the adapters are loaded into a
single PeftModel (:mod:`vichat.serve.runner`) and a single scheduler thread decodes every active
request in one forward pass per step, whatever adapter each uses (continuous batching,
:mod:`vichat.serve.scheduler`); ``max_batch_size`` and ``max_batch_tokens`` in the configuration
bound the batch, and the requests beyond it wait in a queue and are told their place.

A base model whose plugin provides named adapters (:attr:`vichat.specs.BaseModelSpec.adapters`;
the ``tiny`` offline model builds ``tiny-chat`` and ``tiny-doctor`` on first start, minutes with
progress reported, or finds them in its cache) gets them made ready first when no ``base_path`` is
given, and adapter values naming one of them resolve to its folders.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..records import VichatError
from ..specs import Architecture, BaseModelSpec, Decoding, TemplateSpec
from .api import ModelError, ModelInfo, Turn
from .config import LocalBackendConfig, ModelConfig
from .history import context_window, fit_prompt, stop_markers
from .sampling import Sampler, request_seed
from .scheduler import PREFILL_CHUNK, Request, Scheduler, consume
from .text import TokenTextStream

log = logging.getLogger("vichat.serve")

#: ``progress(stage, fraction, message)`` (fraction of the whole start-up, 0 -> 1).
Progress = Callable[[str, float, str], None]


def available(names: Sequence[str]) -> str:
    return ", ".join(names) or "(none)"


def unknown_model(name: str, names: Sequence[str]) -> ModelError:
    return ModelError(f"unknown model {name!r}; available: {available(names)}")


def resolve_template_or_error(name: str, registry: Any = None) -> TemplateSpec:
    """The template ``name`` from ``registry`` (the caller's plugin registry; without one, the
    paper's built-in templates); an unknown name is a :class:`ModelError` listing the known."""
    from ..data.tokenize import resolve_template

    try:
        return registry.template(name) if registry is not None else resolve_template(name)
    except VichatError as exc:
        raise ModelError(str(exc)) from None


def _describe(m: ModelConfig, base: str) -> str:
    return f"{base} + LoRA adapter {Path(m.adapter).name}" if m.adapter else f"{base} (no adapter)"


def _adapter_key(name: str, taken: set[str]) -> str:
    # peft keeps adapters in ModuleDicts: no dots in keys.
    key = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    base, n = key, 1
    while key in taken:
        n += 1
        key = f"{base}_{n}"
    return key


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    keys: dict[str, str | None]  # model name -> adapter key (None: the bare base)
    scheduler: Scheduler
    context: int
    prefix: list[int]
    eos_ids: frozenset[int]


class _LockedTokenizer:
    """Fast tokenizers flip a flag on the shared Rust object per call (``split_special_tokens``),
    so concurrent use can raise "Already borrowed": every call goes through one lock."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.lock = tokenizer, threading.Lock()

    def decode(self, *args: Any, **kwargs: Any) -> str:
        with self.lock:
            return self.tokenizer.decode(*args, **kwargs)

    def encode(self, text: str) -> list[int]:
        from ..data.tokenize import encode_text

        with self.lock:
            return encode_text(self.tokenizer, text)


class LocalEngine:
    """A :class:`vichat.serve.api.ChatBackend` for one base model and its adapters."""

    def __init__(self, config: LocalBackendConfig, *, registry: Any = None, seed: int | None = None) -> None:
        self.config = config
        self.registry = registry  # where config.base and the templates are found (the caller's plugins)
        self.seed = config.seed if seed is None else seed
        self.warnings: list[str] = []
        self._models: dict[str, ModelConfig] = {}
        for m in config.models:
            if m.optional and m.adapter_missing:
                self.warnings.append(f"{m.where}: model {m.name!r} hidden: its adapter {m.adapter} does not exist "
                                     "(train it with `vichat train`, or point the configuration to it)")
                continue
            self._models[m.name] = m
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()
        self._spec: BaseModelSpec | None = None

    # -- construction from an already loaded model (tests, notebooks) --------------------------
    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, models: Sequence[ModelConfig], *, base: str = "custom",
                    context: int | None = None, seed: int | None = None) -> "LocalEngine":
        """Serve ``model`` as is: each ``ModelConfig.adapter`` names an adapter already loaded in it
        (``None``: the bare base)."""
        engine = cls(LocalBackendConfig(base=base, models=tuple(models), context=context), seed=seed)
        engine._spec = BaseModelSpec(
            name=base, description="A model loaded by the caller.", hub_id="",
            architecture=Architecture(family="custom", n_layers=1, hidden_size=1, n_heads=1, vocab_size=1),
            lora_targets=("none",))
        engine._loaded = engine._assemble(model, tokenizer, {m.name: m.adapter for m in models})
        return engine

    # -- ChatBackend ---------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """The models this engine serves (no weights are loaded to answer)."""
        spec = self.spec
        return [ModelInfo(name=m.name, description=m.description or _describe(m, self.config.base),
                          template=m.template or spec.default_template, decoding=m.decoding_over(spec.decoding),
                          backend="local")
                for m in self._models.values() if self._loaded is None or m.name in self._loaded.keys]

    def stream(self, model: str, message: str, history: Sequence[Turn] = (), *, template: str | None = None,
               decoding: Decoding | None = None, cancel: Any = None) -> Iterator[str]:
        """See :meth:`vichat.serve.api.ChatBackend.stream`. Unknown models and load failures raise
        here, at the call; a failure while generating is raised by the iterator. While the request
        waits for a place in the batch the iterator yields :class:`vichat.serve.api.Queued` items (empty strings)."""
        if model not in self._models:
            raise unknown_model(model, list(self._models))
        loaded = self.prepare()
        if model not in loaded.keys:  # an optional adapter that failed to load
            raise unknown_model(model, list(self._models))
        mc = self._models[model]
        tpl = resolve_template_or_error(template or mc.template or self.spec.default_template, self.registry)
        dec = decoding or mc.decoding_over(self.spec.decoding)
        tok = loaded.tokenizer
        # Room kept for the answer: max_new_tokens, but never more than half the window (a huge
        # max_new_tokens must not squeeze the question out); generation also stops at the window's end.
        reserve = min(dec.max_new_tokens, loaded.context // 2)
        try:
            fitted = fit_prompt(tok.encode, tpl, message, history, context=loaded.context,
                                max_new_tokens=reserve, prefix=loaded.prefix)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tokenizer failure is shown, not crashed on
            raise ModelError(f"could not encode the prompt: {type(exc).__name__}: {exc}") from exc
        if fitted.message_cut:  # the user's own words were not all sent: say so where they can see it
            log.warning("%s: the message is too long for the %d-token context (%d tokens kept for the answer): "
                        "only its first %d characters were sent", model, loaded.context, reserve, fitted.message_kept)
        elif fitted.turns_dropped:
            log.info("%s: prompt fitted to %d tokens (%d old turns dropped)", model, len(fitted.ids),
                     fitted.turns_dropped)
        seed = None if self.seed is None else request_seed(self.seed, model, fitted.text)
        req = Request(adapter=loaded.keys[model], prompt_ids=fitted.ids, sampler=Sampler(dec, seed),
                      text=TokenTextStream(tok, stop_markers(tpl, mc.stop)),
                      max_new_tokens=min(dec.max_new_tokens, loaded.context - len(fitted.ids)),
                      eos_ids=loaded.eos_ids, cancel=cancel)
        loaded.scheduler.submit(req)
        return consume(req)

    # -- loading -------------------------------------------------------------------------------
    @property
    def spec(self) -> BaseModelSpec:
        if self._spec is None:
            try:
                if self.registry is None:
                    raise VichatError(f"no plugin registry to find base model {self.config.base!r} in: "
                                      "build the engine with LocalEngine(config, registry=...)")
                self._spec = self.registry.base_model(self.config.base)
            except VichatError as exc:
                raise ModelError(f"{self.config.label}: {exc}") from None
        return self._spec

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def model(self) -> Any:
        """The one model in memory (a PeftModel when adapters are configured); loads it if needed."""
        return self.prepare().model

    def prepare(self, progress: Progress | None = None) -> _Loaded:
        """Load the base and every adapter once (building the tiny model first if needed).

        Safe to call from several threads: one loads, the others wait. Raises :class:`ModelError`."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                try:
                    self._loaded = self._load(progress or (lambda *_: None))
                except ModelError:
                    raise
                except VichatError as exc:  # a message for the user (no weights offline...): no traceback
                    log.error("loading %s failed: %s", self.config.label, exc)
                    raise ModelError(f"cannot load {self.config.label}: {exc}") from exc
                except Exception as exc:  # noqa: BLE001 - the app shows it and stays up
                    log.exception("loading %s failed", self.config.label)
                    raise ModelError(f"cannot load {self.config.label}: {type(exc).__name__}: {exc}") from exc
        return self._loaded

    def close(self) -> None:
        """Stop the scheduler thread (requests in flight end with an error)."""
        if self._loaded is not None:
            self._loaded.scheduler.close()

    def _load(self, progress: Progress) -> _Loaded:
        import torch

        cfg, spec = self.config, self.spec
        path, named, start = cfg.base_path, {}, 0.0
        if path is None and spec.adapters is not None and any(m.adapter for m in self._models.values()):
            # Making the plugin's adapters ready (the tiny model's build) is most of the wait: it gets
            # 90% of the bar, loading the rest (one bar that never goes back).
            start = 0.9
            named = dict(spec.adapters(spec, self.registry,
                                       progress=lambda stage, f, msg: progress(stage, start * f, msg)))
        elif path is None:
            path = self._recorded_base()

        def loading(fraction: float, message: str) -> None:
            progress("load", start + (1 - start) * fraction, message)

        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        options: dict[str, Any] = {}
        if cfg.load_in != "none":
            options["load_in"] = cfg.load_in
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(cfg.dtype)
        options["dtype"] = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
        if device != "cpu":
            options["device_map"] = {"": device}
        loading(0.0, f"loading base model {cfg.base} from {path or spec.hub_id}")
        from ..models import load_base

        model, tokenizer = load_base(spec, path, **options)
        model.eval()

        # One PeftModel, one entry per distinct adapter (two models may share an adapter).
        from .runner import load_adapters

        wanted = [m for m in self._models.values() if m.adapter]
        keys: dict[str, str | None] = {m.name: None for m in self._models.values() if not m.adapter}
        by_source: dict[str, str] = {}
        for i, m in enumerate(wanted, 1):
            source = named.get(m.adapter, m.adapter)
            loading(i / (len(wanted) + 1), f"loading adapter of {m.name} from {source}")
            if source in by_source:
                keys[m.name] = by_source[source]
                continue
            key = _adapter_key(m.name, set(by_source.values()))
            try:
                if hasattr(model, "peft_config"):
                    model.load_adapter(source, adapter_name=key, is_trainable=False)
                else:
                    model = load_adapters(model, [(key, source)])
            except Exception as exc:  # noqa: BLE001
                if not m.optional:
                    raise ModelError(f"{m.where}: cannot load the adapter of model {m.name!r} from {source}: "
                                     f"{type(exc).__name__}: {exc}") from exc
                self.warnings.append(f"{m.where}: model {m.name!r} hidden: its adapter {source} did not load "
                                     f"({type(exc).__name__}: {exc})")
                log.warning(self.warnings[-1])
                continue
            by_source[source] = key
            keys[m.name] = key
        model.eval()
        loaded = self._assemble(model, tokenizer, keys)
        progress("ready", 1.0, f"{cfg.base}: {len(keys)} model(s) ready ({', '.join(keys)})")
        return loaded

    def _recorded_base(self) -> str | None:
        """The local base folder the configured adapters were trained on (as :func:`vichat.models.resolve`
        reads it: vichat's record, else ``base_model_name_or_path``), when no ``base_path`` is given,
        the way ``vichat eval generate`` finds it. ``None``: no adapter records a folder that exists
        here (the spec's hub id is then loaded). Adapters trained on another base model, or on two
        different folders, are a :class:`ModelError` naming them."""
        from ..models import resolve

        base_models = self.registry.all("base_models") if self.registry is not None else [self.spec]
        folders: dict[str, list[str]] = {}
        for m in self._models.values():
            if not m.adapter or not (Path(m.adapter).expanduser() / "adapter_config.json").is_file():
                continue
            try:
                resolved = resolve(m.adapter, base_models)
            except VichatError:
                continue  # the adapter's own loading reports what is wrong with it
            if resolved.spec is not None and resolved.spec.name != self.spec.name:
                raise ModelError(f"{m.where}: the adapter of model {m.name!r} was trained on base model "
                                 f"{resolved.spec.name!r}, but this backend serves {self.config.base!r}: give it "
                                 f"a backend with base: {resolved.spec.name}")
            if Path(resolved.base).is_dir():
                folders.setdefault(resolved.base, []).append(m.name)
        if len(folders) > 1:
            listed = "; ".join(f"{', '.join(names)}: {folder}" for folder, names in folders.items())
            raise ModelError(f"{self.config.label}: the adapters were trained on different base folders ({listed}); "
                             "set base_path: to the one to serve, or split them into backends")
        return next(iter(folders), None)

    def _assemble(self, model: Any, tokenizer: Any, keys: dict[str, str | None]) -> _Loaded:
        from .runner import BatchRunner

        runner = BatchRunner(model)
        for name, key in keys.items():
            if key is not None and key not in runner.adapters:
                raise ModelError(f"model {name!r}: adapter {key!r} is not loaded in the model")
        context = self.config.context or context_window(model, tokenizer, self.spec.architecture.max_positions)
        prefix = ([tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False)
                  and tokenizer.bos_token_id is not None else [])
        eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else ({gen_eos} if gen_eos is not None else set())
        cfg = self.config
        # A prefill chunk should cost about one decoding step. On a GPU a step is memory-bound and
        # 512 prompt tokens cost little more than one token. On a CPU every token costs compute:
        # smaller chunks protect running streams but delay a newcomer's first token (more passes).
        chunk = cfg.prefill_chunk or (PREFILL_CHUNK if getattr(runner.device, "type", str(runner.device)) == "cuda"
                                      else PREFILL_CHUNK // 2)
        scheduler = Scheduler(runner, name=f"vichat-{cfg.base}", max_batch_size=cfg.max_batch_size,
                              max_batch_tokens=cfg.max_batch_tokens, prefill_chunk=chunk)
        return _Loaded(model, _LockedTokenizer(tokenizer), keys, scheduler, context, prefix, frozenset(eos))
