"""Which models the app offers: one YAML file, chosen by ``VICHAT_MODELS_CONFIG`` or by the machine.

The format (docs/serving.md has complete examples)::

    backends:                      # or the list itself at the top level
      - base: bloomz-7b1-mt        # local: a registered base-model name (`vichat plugins`)
        base_path: /models/bloomz  # optional: the base's local folder (default: its hub id, or the
                                   #   path the adapters recorded); the same --base-path as every command
        load_in: 8bit              # none | 8bit | 4bit
        dtype: auto                # auto | float32 | float16 | bfloat16
        device: auto               # auto | cpu | cuda | cuda:1
        context: 2048              # optional context window in tokens
        seed: 0                    # optional: reproducible sampling
        max_batch_size: 16         # requests decoded together in one forward pass; the rest queue
        max_batch_tokens: 8192     # KV-cache positions: rows x the longest (prompt + max_new_tokens)
        prefill_chunk: 256         # prompt tokens prefilled per step while the others keep decoding
                                   #   (default 512 on a GPU, 256 on a CPU)
        models:
          - name: bloomz-chat      # shown in the app, stored in votes
            adapter: runs/bloomz-chat   # local dir or hub id of a PEFT adapter; null = the bare base
            template: chat
            description: Bloomz-Chat (paper)
            decoding: {temperature: 0.5, top_k: 20}   # overrides of the base's defaults
            optional: true         # a missing local adapter hides the model instead of failing
      - type: vllm                 # vLLM: vichat starts `vllm serve` (or connects to it) with LoRA
        base: gptj-6b-vi           #   the adapters below become LoRA modules named like the models
        port: 8000                 #   (docs/serving.md: which bases vLLM serves LoRA for; merged models)
        models:
          - {name: gptj-chat, adapter: runs/gptj-chat, template: chat}
      - base_url: http://gpu-box:8000/v1   # remote: any OpenAI-compatible server
        api_key_env: VLLM_API_KEY           # the *name* of the variable holding the key
        api: completions                    # completions (template prompt) | chat (server's chat template)
        models:
          - {name: bloomz-chat-vllm, model: bloomz-chat, template: chat}

``${VAR}`` and ``${VAR:-default}`` in any string are replaced from the environment. Relative paths
are relative to the file's folder (the packaged defaults: to the current directory). Model names are
unique across all backends.

:func:`load_config` reads ``path``, else the file named by ``VICHAT_MODELS_CONFIG``, else
:func:`default_config`, which picks a packaged file: the paper's four models with a GPU and the hub
reachable, bloomz-560m on a CPU with the hub reachable, the tiny model offline.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Union
from urllib.parse import urlparse

from ..specs import NAME_RE, Decoding
from .yamlfile import ConfigError, Reader, compose

ENV_CONFIG = "VICHAT_MODELS_CONFIG"
ENV_OFFLINE = "VICHAT_OFFLINE"
DEFAULTS = {"paper": "paper.yaml", "cpu": "cpu.yaml", "tiny": "tiny.yaml"}
HUB_HOST, HUB_PORT = "huggingface.co", 443
LOAD_IN = ("none", "8bit", "4bit")
DTYPES = ("auto", "float32", "float16", "bfloat16")
APIS = ("completions", "chat")


@dataclass(frozen=True)
class ModelConfig:
    """One model the app offers."""

    name: str
    adapter: str | None = None  # local backends: PEFT adapter dir or hub id; None = the bare base
    template: str | None = None  # default: the base's default template (local), "chat" (remote)
    description: str = ""
    decoding: Mapping[str, Any] = field(default_factory=dict)  # overrides of Decoding fields
    model: str | None = None  # remote backends: the server's model name (default: ``name``)
    stop: tuple[str, ...] = ()  # extra stop markers on top of the template's
    optional: bool = False
    where: str = ""  # "file:line", for messages

    def decoding_over(self, base: Decoding) -> Decoding:
        return replace(base, **dict(self.decoding))

    @property
    def adapter_missing(self) -> bool:
        """The adapter is a local folder (the file made it absolute: not a hub id) that is not there."""
        return bool(self.adapter) and Path(self.adapter).is_absolute() and not Path(self.adapter).exists()


@dataclass(frozen=True)
class LocalBackendConfig:
    """One base model in memory serving its models (adapters, or the bare base)."""

    base: str
    models: tuple[ModelConfig, ...]
    base_path: str | None = None  # the base model's local folder (or hub id); default: the spec's hub id
    load_in: str = "none"
    dtype: str = "auto"
    device: str = "auto"
    context: int | None = None
    seed: int | None = None
    max_batch_size: int = 16  # requests decoded together; more wait in a queue
    max_batch_tokens: int = 8192  # KV-cache positions: rows x the longest (prompt + max_new_tokens)
    prefill_chunk: int | None = None  # prompt tokens prefilled per step (default: 512 on a GPU, 256 on a CPU)
    where: str = ""

    @property
    def label(self) -> str:
        return f"local backend {self.base!r}" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class RemoteBackendConfig:
    """An OpenAI-compatible server (vLLM, TGI, ...)."""

    base_url: str
    models: tuple[ModelConfig, ...]
    api_key_env: str | None = None
    api: str = "completions"
    timeout: float = 120.0
    max_retries: int = 1
    where: str = ""

    @property
    def label(self) -> str:
        return f"remote backend {self.base_url!r}" + (f" ({self.where})" if self.where else "")


@dataclass(frozen=True)
class VllmBackendConfig:
    """A ``vllm serve`` process for one base model, its adapters registered as LoRA modules
    (:mod:`vichat.serve.vllm`); vichat starts it, or connects to one already running."""

    base: str
    models: tuple[ModelConfig, ...]
    base_path: str | None = None  # the model vLLM loads (default: the base spec's hub id)
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str | None = None  # default: http://{host}:{port}/v1
    start: bool = True  # start `vllm serve` when nothing answers at base_url
    lora: str = "auto"  # auto | true | false: whether vLLM serves LoRA adapters for this base
    max_lora_rank: int | None = None  # default: the largest r among the adapters
    dtype: str = "auto"
    context: int | None = None  # --max-model-len
    api_key_env: str | None = None
    command: tuple[str, ...] = ("vllm",)  # the program whose `serve` subcommand starts the server
    args: tuple[str, ...] = ()  # more `vllm serve` arguments, passed as given
    startup_timeout: float = 900.0
    timeout: float = 120.0
    max_retries: int = 1
    where: str = ""

    @property
    def url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}/v1"

    @property
    def label(self) -> str:
        return f"vllm backend {self.base!r}" + (f" ({self.where})" if self.where else "")


BackendConfig = Union[LocalBackendConfig, RemoteBackendConfig, VllmBackendConfig]


@dataclass(frozen=True)
class ServeConfig:
    """Every configured backend, and where the configuration came from."""

    backends: tuple[BackendConfig, ...]
    source: str = ""
    notes: tuple[str, ...] = ()

    def model_names(self) -> list[str]:
        return [m.name for b in self.backends for m in b.models]


_MODEL_KEYS = ("name", "adapter", "template", "description", "decoding", "model", "stop", "optional")
_LOCAL_KEYS = ("type", "base", "base_path", "path", "load_in", "dtype", "device", "context", "seed", "max_batch_size",
               "max_batch_tokens", "prefill_chunk", "models")
_REMOTE_KEYS = ("type", "base_url", "api_key_env", "api", "timeout", "max_retries", "models")
_VLLM_KEYS = ("type", "base", "base_path", "path", "host", "port", "base_url", "start", "lora", "max_lora_rank", "dtype", "context",
              "api_key_env", "command", "args", "startup_timeout", "timeout", "max_retries", "models")
_DECODING_KEYS = tuple(f.name for f in fields(Decoding))


def _decoding(r: Reader, value: Any, path: tuple) -> dict[str, Any]:
    if value is None:
        return {}
    raw = r.mapping(value, path, _DECODING_KEYS)
    out: dict[str, Any] = {}
    for key, v in raw.items():
        p = path + (key,)
        if key == "max_new_tokens":
            out[key] = r.number(v, p, int, 1)
        elif key == "top_k":
            out[key] = r.number(v, p, int, 0)
        else:
            out[key] = r.number(v, p, float, 0.0)
    if "top_p" in out and not 0 < out["top_p"] <= 1:
        raise r.fail(path + ("top_p",), f"must be in (0, 1], got {out['top_p']}")
    if out.get("repetition_penalty", 1.0) <= 0:
        raise r.fail(path + ("repetition_penalty",), "must be positive")
    return out


def _model(r: Reader, value: Any, path: tuple, local: bool) -> ModelConfig:
    raw = r.mapping(value, path, _MODEL_KEYS, required=("name",))
    name = r.string(raw["name"], path + ("name",))
    if not NAME_RE.match(name):
        raise r.fail(path + ("name",), f"{name!r} is not a valid model name: use lowercase letters, digits, "
                     "'.', '_' or '-', starting with a letter or digit (names are stored in votes)")
    adapter = raw.get("adapter")
    if adapter is not None:
        if not local:
            raise r.fail(path + ("adapter",), "remote models have no adapter: name the server's model with 'model'")
        adapter = r.location(r.string(adapter, path + ("adapter",)))
    if raw.get("model") is not None and local:
        raise r.fail(path + ("model",), "'model' is for remote backends; a local model uses 'adapter'")
    stop = raw.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise r.fail(path + ("stop",), "expected a list of non-empty strings")
    optional = raw.get("optional", False)
    if not isinstance(optional, bool):
        raise r.fail(path + ("optional",), f"expected true or false, got {optional!r}")
    model = ModelConfig(
        name=name,
        adapter=adapter,
        template=r.string(raw["template"], path + ("template",)) if raw.get("template") is not None else None,
        description=str(raw.get("description") or "").strip(),
        decoding=_decoding(r, raw.get("decoding"), path + ("decoding",)),
        model=r.string(raw["model"], path + ("model",)) if raw.get("model") is not None else None,
        stop=tuple(stop),
        optional=optional,
        where=r.where(path),
    )
    if model.adapter_missing and not optional:
        # A path (absolute, ./ or ../) is checked now, not when the model loads after the app is up.
        raise r.fail(path + ("adapter",), f"the adapter folder {adapter} does not exist: train it with "
                     "`vichat train`, correct the path, or add `optional: true` to hide the model while it is missing")
    return model


def _models(r: Reader, value: Any, path: tuple, local: bool) -> tuple[ModelConfig, ...]:
    if not isinstance(value, list) or not value:
        raise r.fail(path, "expected a non-empty list of models")
    return tuple(_model(r, m, path + (i,), local) for i, m in enumerate(value))


def _base_path(r: Reader, raw: dict, path: tuple) -> str | None:
    """``base_path:`` (a file-relative folder or a hub id); the old key ``path:`` still works, with a warning."""
    if raw.get("path") is not None:
        if raw.get("base_path") is not None:
            raise r.fail(path + ("path",), "give base_path only ('path' is its old name)")
        warnings.warn(f"{r.where(path + ('path',))}: 'path' is renamed 'base_path' (as --base-path on every "
                      "command); the old name will go", FutureWarning, stacklevel=2)
        return r.location(r.string(raw["path"], path + ("path",)))
    if raw.get("base_path") is None:
        return None
    return r.location(r.string(raw["base_path"], path + ("base_path",)))


def _backend(r: Reader, value: Any, path: tuple) -> BackendConfig:
    if not isinstance(value, dict):
        raise r.fail(path, "expected a mapping: a local backend (with 'base') or a remote one (with 'base_url')")
    kind = value.get("type") or ("remote" if "base_url" in value else "local" if "base" in value else None)
    if kind == "local":
        raw = r.mapping(value, path, _LOCAL_KEYS, required=("base", "models"))
        context = raw.get("context")
        seed = raw.get("seed")
        return LocalBackendConfig(
            base=r.string(raw["base"], path + ("base",)),
            models=_models(r, raw["models"], path + ("models",), local=True),
            base_path=_base_path(r, raw, path),
            load_in=r.string(raw.get("load_in") or "none", path + ("load_in",), LOAD_IN),
            dtype=r.string(raw.get("dtype", "auto"), path + ("dtype",), DTYPES),
            device=r.string(raw.get("device", "auto"), path + ("device",)),
            context=r.number(context, path + ("context",), int, 16) if context is not None else None,
            seed=r.number(seed, path + ("seed",), int) if seed is not None else None,
            max_batch_size=r.number(raw.get("max_batch_size", 16), path + ("max_batch_size",), int, 1),
            max_batch_tokens=r.number(raw.get("max_batch_tokens", 8192), path + ("max_batch_tokens",), int, 16),
            prefill_chunk=(r.number(raw["prefill_chunk"], path + ("prefill_chunk",), int, 1)
                           if raw.get("prefill_chunk") is not None else None),
            where=r.where(path),
        )
    if kind == "remote":
        raw = r.mapping(value, path, _REMOTE_KEYS, required=("base_url", "models"))
        url = r.string(raw["base_url"], path + ("base_url",))
        if urlparse(url).scheme not in ("http", "https"):
            raise r.fail(path + ("base_url",), f"{url!r} is not an http(s) URL (e.g. http://host:8000/v1)")
        key_env = raw.get("api_key_env")
        return RemoteBackendConfig(
            base_url=url,
            models=_models(r, raw["models"], path + ("models",), local=False),
            api_key_env=r.string(key_env, path + ("api_key_env",)) if key_env is not None else None,
            api=r.string(raw.get("api", "completions"), path + ("api",), APIS),
            timeout=r.number(raw.get("timeout", 120.0), path + ("timeout",), float, 0.1),
            max_retries=r.number(raw.get("max_retries", 1), path + ("max_retries",), int, 0),
            where=r.where(path),
        )
    if kind == "vllm":
        return _vllm_backend(r, value, path)
    raise r.fail(path, f"type {kind!r}: a backend is local (with 'base'), remote (with 'base_url') or "
                 "'type: vllm'")


def _strings(r: Reader, value: Any, path: tuple) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise r.fail(path, "expected a list of strings")
    return tuple(str(v) for v in value)


def _vllm_backend(r: Reader, value: Any, path: tuple) -> VllmBackendConfig:
    raw = r.mapping(value, path, _VLLM_KEYS, required=("base", "models"))
    models = _models(r, raw["models"], path + ("models",), local=True)
    lora = raw.get("lora", "auto")
    if isinstance(lora, bool):
        lora = "true" if lora else "false"
    lora = r.string(str(lora), path + ("lora",), ("auto", "true", "false"))
    start = raw.get("start", True)
    if not isinstance(start, bool):
        raise r.fail(path + ("start",), f"expected true or false, got {start!r}")
    url = raw.get("base_url")
    if url is not None:
        url = r.string(url, path + ("base_url",))
        if urlparse(url).scheme not in ("http", "https"):
            raise r.fail(path + ("base_url",), f"{url!r} is not an http(s) URL (e.g. http://host:8000/v1)")
    rank, context, key_env = raw.get("max_lora_rank"), raw.get("context"), raw.get("api_key_env")
    return VllmBackendConfig(
        base=r.string(raw["base"], path + ("base",)),
        models=models,
        base_path=_base_path(r, raw, path),
        host=r.string(raw.get("host", "127.0.0.1"), path + ("host",)),
        port=r.number(raw.get("port", 8000), path + ("port",), int, 1),
        base_url=url,
        start=start,
        lora=lora,
        max_lora_rank=r.number(rank, path + ("max_lora_rank",), int, 1) if rank is not None else None,
        dtype=r.string(raw.get("dtype", "auto"), path + ("dtype",), DTYPES),
        context=r.number(context, path + ("context",), int, 16) if context is not None else None,
        api_key_env=r.string(key_env, path + ("api_key_env",)) if key_env is not None else None,
        command=_strings(r, raw.get("command", ["vllm"]), path + ("command",)),
        args=_strings(r, raw.get("args") or [], path + ("args",)),
        startup_timeout=r.number(raw.get("startup_timeout", 900.0), path + ("startup_timeout",), float, 1.0),
        timeout=r.number(raw.get("timeout", 120.0), path + ("timeout",), float, 0.1),
        max_retries=r.number(raw.get("max_retries", 1), path + ("max_retries",), int, 0),
        where=r.where(path),
    )


def check_unique(config: ServeConfig) -> None:
    """Model names must be unique across backends (they are stored in votes); a clash names both."""
    seen: dict[str, tuple[str, BackendConfig]] = {}
    for backend in config.backends:
        for m in backend.models:
            if m.name in seen:
                where, other = seen[m.name]
                raise ConfigError(f"model name {m.name!r} is used twice: {where} in {other.label} and {m.where} "
                                  f"in {backend.label}; names must be unique across backends (votes store them)")
            seen[m.name] = (m.where, backend)


def parse_config(text: str, source: str = "<config>", base_dir: str | os.PathLike | None = None) -> ServeConfig:
    """A :class:`ServeConfig` from YAML ``text``; relative paths resolve against ``base_dir``."""
    data, lines = compose(text, source)
    r = Reader(source, lines, Path(base_dir) if base_dir is not None else Path.cwd())
    path: tuple = ()
    if isinstance(data, dict):
        r.mapping(data, (), ("backends",), required=("backends",))
        data, path = data["backends"], ("backends",)
    if not isinstance(data, list) or not data:
        raise r.fail(path, "expected a non-empty list of backends (or a mapping with 'backends:')")
    config = ServeConfig(tuple(_backend(r, b, path + (i,)) for i, b in enumerate(data)), source=source)
    check_unique(config)
    return config


def text_line(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def read_config(path: str | os.PathLike) -> ServeConfig:
    """Read a config file (relative paths inside it are relative to its folder)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the models configuration ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = text_line(p.read_bytes(), exc.start)
        raise ConfigError(f"{p}:{line}: the models configuration is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          "at that line): save it as UTF-8") from None
    return parse_config(text, str(p), p.resolve().parent)


# --------------------------------------------------------------------------- defaults


def _flag(var: str) -> bool | None:
    raw = os.environ.get(var, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return None


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the Hugging Face hub answers: ``VICHAT_OFFLINE`` (1/0) decides when set,
    ``HF_HUB_OFFLINE=1`` means no; else one TCP connect to the hub (``HF_ENDPOINT`` if set)."""
    offline = _flag(ENV_OFFLINE)
    if offline is not None:
        return not offline
    if _flag("HF_HUB_OFFLINE"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    host = endpoint.hostname or HUB_HOST
    port = endpoint.port or (80 if endpoint.scheme == "http" else HUB_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def has_gpu() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def packaged_config(name: str) -> ServeConfig:
    """One of the packaged defaults (``paper``, ``cpu``, ``tiny``); relative paths: the current directory."""
    if name not in DEFAULTS:
        raise ConfigError(f"no packaged models configuration {name!r}; choose from {', '.join(DEFAULTS)}")
    res = resources.files("vichat.serve").joinpath("configs").joinpath(DEFAULTS[name])
    return parse_config(res.read_text(encoding="utf-8"), f"vichat/serve/configs/{DEFAULTS[name]}", Path.cwd())


def default_config(*, online: bool | None = None, gpu: bool | None = None) -> ServeConfig:
    """The packaged default for this machine: ``paper`` (GPU + hub), ``cpu`` (hub, no GPU), else ``tiny``."""
    if online is None:
        online = hub_reachable()
    if not online:
        name, why = "tiny", "the Hugging Face hub is not reachable (or VICHAT_OFFLINE=1)"
    else:
        gpu = has_gpu() if gpu is None else gpu
        name, why = ("paper", "a GPU and the hub are available") if gpu else ("cpu", "the hub is reachable, no GPU")
    config = packaged_config(name)
    return replace(config, notes=(f"default models configuration {name!r}: {why}",))


def load_config(path: str | os.PathLike | None = None) -> ServeConfig:
    """``path``, else the file named by ``VICHAT_MODELS_CONFIG``, else :func:`default_config`."""
    if path is not None:
        return read_config(path)
    env = os.environ.get(ENV_CONFIG, "").strip()
    if env:
        if not Path(env).expanduser().is_file():
            raise ConfigError(f"{ENV_CONFIG}={env}: no such file (unset it to use the default models)")
        return read_config(env)
    return default_config()
