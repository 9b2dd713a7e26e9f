"""The ``openai`` translator: any OpenAI-compatible chat endpoint, through the official client.

A batch goes out as a numbered JSON list (``[{"id": 1, "text": ...}, ...]``) and must come back
as a JSON list of the same length (ids 1..n, or plain strings in order). Anything else (a short
list, prose around the JSON, broken JSON) raises ``RetryableError``: the job asks again and, if
it never gets a faithful answer, marks the batch failed. Output is never misaligned.

Environment: ``OPENAI_API_KEY`` (required), ``OPENAI_BASE_URL`` (optional: vLLM, Ollama, Azure
proxies, a local test server). Options: ``model`` (default gpt-4o-mini), ``temperature``
(default 0), ``timeout`` (seconds per request, default 120).

Cost (a rough estimate, documented in docs/translation.md): about $0.30 per million source
characters with gpt-4o-mini ($0.15/M input and $0.60/M output tokens; ~4 English characters per
input token, Vietnamese output at ~2.5-3 characters per token, plus prompt and JSON overhead).
Other models cost differently; ``--dry-run`` always uses this figure.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading

from vichat.plugin import hookimpl, TranslatorSpec

KEY_VAR = "OPENAI_API_KEY"
LANGUAGES = {
    "en": "English", "vi": "Vietnamese", "fr": "French", "de": "German", "es": "Spanish",
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "th": "Thai", "id": "Indonesian",
}
SYSTEM = (
    "You are a professional translator. Translate the \"text\" of every item from {source} to "
    "{target}, naturally and completely. Markers such as \u27e60\u27e7 stand for code, numbers or "
    "links: copy every marker exactly once, unchanged. Do not translate code, add notes or merge "
    "items. Reply with only a JSON array of {n} objects {{\"id\": <same id>, \"text\": <translation>}}, "
    "one per input item, in the same order."
)

_clients: dict = {}
_lock = threading.Lock()


def _client(timeout: float):
    # The client pools connections and is thread-safe; its own retries are off (the job retries
    # with backoff across all batches, and counts every request).
    from openai import OpenAI

    key = os.environ.get(KEY_VAR)
    base_url = os.environ.get("OPENAI_BASE_URL") or None
    with _lock:
        ident = (key, base_url, timeout)
        if ident not in _clients:
            _clients[ident] = OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
            atexit.register(_clients[ident].close)  # no "unclosed socket" warnings at exit
        return _clients[ident]


def parse_items(content: str, n: int) -> list[str]:
    """The ``n`` translations in an answer, in order; ``ValueError`` if it is not exactly that."""
    text = content.strip()
    fence = re.match(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", text, re.S)
    if fence:
        text = fence.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("["), text.rfind("]")
        if start < 0 or end <= start:
            raise ValueError("the answer is not a JSON list") from None
        try:
            data = json.loads(text[start : end + 1])
        except json.JSONDecodeError as exc:
            raise ValueError(f"the answer is not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError("the answer is a JSON object without one list in it")
        data = lists[0]
    if not isinstance(data, list):
        raise ValueError(f"the answer is JSON {type(data).__name__}, not a list")
    if len(data) != n:
        raise ValueError(f"the answer has {len(data)} items for {n} texts")
    if all(isinstance(x, str) for x in data):
        return list(data)
    if not all(isinstance(x, dict) and isinstance(x.get("text", x.get("translation")), str) for x in data):
        raise ValueError("the answer's items are not strings or {id, text} objects")
    texts = [x.get("text", x.get("translation")) for x in data]
    ids = [x.get("id") for x in data]
    if all(isinstance(i, int) for i in ids):
        if sorted(ids) != list(range(1, n + 1)):
            raise ValueError(f"the answer's ids are {ids}, expected 1..{n}")
        texts = [t for _, t in sorted(zip(ids, texts))]
    return texts


def translate(texts: list[str], source: str, target: str, *, model: str, temperature: float, timeout: float) -> list[str]:
    """Translate one batch through the chat completions API."""
    import openai

    from vichat.plugin import FatalTranslatorError, RetryableError, parse_retry_after

    if not os.environ.get(KEY_VAR):
        raise FatalTranslatorError(f"the openai translator needs {KEY_VAR} (any value for a local server without keys)")
    items = [{"id": i, "text": t} for i, t in enumerate(texts, 1)]
    messages = [
        {"role": "system", "content": SYSTEM.format(
            source=LANGUAGES.get(source, source), target=LANGUAGES.get(target, target), n=len(texts))},
        {"role": "user", "content": json.dumps(items, ensure_ascii=False)},
    ]
    try:
        resp = _client(float(timeout)).chat.completions.create(
            model=str(model), messages=messages, temperature=float(temperature)
        )
    except (openai.APITimeoutError, openai.APIConnectionError) as exc:
        raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
    except openai.RateLimitError as exc:
        if getattr(exc, "code", None) == "insufficient_quota":
            raise FatalTranslatorError(f"the OpenAI account has no quota left: {exc.message}") from exc
        raise RetryableError(f"rate limited: {exc.message}", parse_retry_after(exc.response.headers.get("retry-after"))) from exc
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise FatalTranslatorError(f"the endpoint rejected the key (HTTP {exc.status_code}); check {KEY_VAR}") from exc
    except openai.NotFoundError as exc:
        raise FatalTranslatorError(f"model {model!r} not found at the endpoint: {exc.message} (pass --option model=...)") from exc
    except openai.APIStatusError as exc:
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            raise RetryableError(f"HTTP {exc.status_code}: {exc.message}",
                                 parse_retry_after(exc.response.headers.get("retry-after"))) from exc
        raise ValueError(f"HTTP {exc.status_code}: {exc.message}") from exc
    choice = resp.choices[0] if resp.choices else None
    if choice is None or not isinstance(choice.message.content, str):
        raise RetryableError("the answer has no message content")
    if choice.finish_reason == "length":
        raise ValueError("the answer was cut off at the model's length limit; lower --batch-chars")
    try:
        return parse_items(choice.message.content, len(texts))
    except ValueError as exc:
        raise RetryableError(f"unusable answer from {model}: {exc}") from exc


def check_options(options: dict) -> None:
    """Refuse, before anything is sent, an option value no request could succeed with (vichat has
    converted ``--option`` strings to the declared defaults' types and checked ``timeout`` > 0)."""
    if not str(options["model"]).strip():
        raise ValueError("model must name a model, e.g. model=gpt-4o-mini")
    if not 0 <= options["temperature"] <= 2:
        raise ValueError(f"temperature={options['temperature']!r}: expected a number from 0 to 2")




@hookimpl
def register_translators(register):
    register(
        TranslatorSpec(
            name="openai",
            description="An OpenAI-compatible chat model (default gpt-4o-mini); needs OPENAI_API_KEY, optional OPENAI_BASE_URL.",
            translate=translate,
            env_vars=(KEY_VAR,),
            # Small batches: a long list makes a model more likely to merge or drop items.
            max_batch_size=20,
            max_batch_chars=6_000,
            cost_per_million_chars=0.30,
            options={"model": "gpt-4o-mini", "temperature": 0.0, "timeout": 120.0},
            check_options=check_options,
        )
    )
