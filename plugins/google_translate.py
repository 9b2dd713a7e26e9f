"""The ``google`` translator: Google Cloud Translation v2 (Basic) over REST, with httpx.

``POST https://translation.googleapis.com/language/translate/v2?key=$GOOGLE_API_KEY`` with JSON
``{"q": [...], "source": "en", "target": "vi", "format": "text"}``; the answer is
``{"data": {"translations": [{"translatedText": ...}, ...]}}`` in request order.
``VICHAT_GOOGLE_TRANSLATE_URL`` overrides the endpoint (a proxy, or a local server in tests).

Options (``--option key=value``): ``timeout`` (seconds per request, default 60), ``model``
(``nmt`` or ``base``; Google's default when unset).
Pricing: $20 per million characters sent (Basic edition, beyond the free tier).
"""

from __future__ import annotations

import atexit
import os
import threading

from vichat.plugin import hookimpl, TranslatorSpec

DEFAULT_URL = "https://translation.googleapis.com/language/translate/v2"
KEY_VAR = "GOOGLE_API_KEY"
URL_VAR = "VICHAT_GOOGLE_TRANSLATE_URL"

_client = None
_client_lock = threading.Lock()


def _http():
    # One pooled client for all worker threads: connections are reused across batches.
    global _client
    with _client_lock:
        if _client is None:
            import httpx

            _client = httpx.Client(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
            atexit.register(_client.close)  # no "unclosed socket" warnings at exit
        return _client


def _error_detail(resp) -> tuple[str, str]:
    """Google's error message and first reason (e.g. ``rateLimitExceeded``), if readable."""
    try:
        err = resp.json().get("error", {})
        reasons = [e.get("reason", "") for e in err.get("errors", []) if isinstance(e, dict)]
        return str(err.get("message", "")) or resp.text[:200], (reasons[0] if reasons else "")
    except Exception:  # noqa: BLE001 - an error page need not be JSON
        return resp.text[:200], ""


def translate(texts: list[str], source: str, target: str, *, timeout: float, model: str | None) -> list[str]:
    """Translate one batch; raises RetryableError on 429/5xx/timeouts/garbled answers."""
    import httpx

    from vichat.plugin import FatalTranslatorError, RetryableError, parse_retry_after

    key = os.environ.get(KEY_VAR)
    if not key:
        raise FatalTranslatorError(f"the google translator needs {KEY_VAR}: set it to a Cloud Translation API key")
    url = os.environ.get(URL_VAR) or DEFAULT_URL
    body: dict = {"q": list(texts), "source": source, "target": target, "format": "text"}
    if model and str(model) != "None":
        body["model"] = str(model)
    try:
        resp = _http().post(url, params={"key": key}, json=body, timeout=float(timeout))
    except httpx.TimeoutException as exc:
        raise RetryableError(f"Google Translate timed out after {float(timeout):g}s ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:  # connection refused/reset, DNS: the network, not the batch
        raise RetryableError(f"cannot reach Google Translate: {type(exc).__name__}: {exc}") from exc

    status = resp.status_code
    if status != 200:
        message, reason = _error_detail(resp)
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        if status == 429 or status >= 500 or reason in ("rateLimitExceeded", "userRateLimitExceeded"):
            raise RetryableError(f"Google Translate HTTP {status}: {message}", retry_after)
        if status in (401, 403) or "API key" in message:
            raise FatalTranslatorError(f"Google Translate rejected the request (HTTP {status}: {message}); check {KEY_VAR}")
        raise ValueError(f"Google Translate HTTP {status}: {message}")
    try:
        items = resp.json()["data"]["translations"]
        out = [item["translatedText"] for item in items]
    except Exception as exc:  # noqa: BLE001 - any malformed body is the same problem
        raise RetryableError(f"Google Translate sent a malformed answer: {resp.text[:120]!r}") from exc
    if len(out) != len(texts) or not all(isinstance(t, str) for t in out):
        raise RetryableError(f"Google Translate returned {len(out)} translations for {len(texts)} texts")
    return out


MODELS = ("nmt", "base")


def check_options(options: dict) -> None:
    """Refuse, before anything is sent, a model Cloud Translation v2 does not have (vichat has
    converted ``timeout`` to a number and checked it is above 0)."""
    model = options["model"]
    if model is not None and str(model) != "None" and str(model) not in MODELS:
        raise ValueError(f"model={model!r}: expected {' or '.join(MODELS)} (or leave it unset for Google's default)")




@hookimpl
def register_translators(register):
    register(
        TranslatorSpec(
            name="google",
            description="Google Cloud Translation v2 (Basic) REST API; needs GOOGLE_API_KEY.",
            translate=translate,
            env_vars=(KEY_VAR,),
            # Google's limits: 128 texts per request; it recommends under 5,000 characters.
            max_batch_size=128,
            max_batch_chars=5_000,
            cost_per_million_chars=20.0,
            options={"timeout": 60.0, "model": None},  # model: "nmt" or "base" (Google's default when None)
            check_options=check_options,
        )
    )
