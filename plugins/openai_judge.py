"""The ``openai`` judge: the OpenAI chat API, or any OpenAI-compatible server, through the
official client (the paper's judge: GPT-4 with the FastChat prompts).

Environment: ``OPENAI_API_KEY`` (required; any value for a local server without keys) and
``OPENAI_BASE_URL`` (optional: vLLM, llama.cpp server, Ollama, TGI, a proxy). Besides what every
judge gets (``model``, default gpt-4; ``temperature``, ``max_tokens``, ``aspects`` and ``policy``,
the run's rate limiter, cost cap and retries), its options are ``base_url`` (overrides
``OPENAI_BASE_URL``) and ``timeout`` (seconds per request, 120). The limits the server announces in its
``x-ratelimit-limit-*`` headers go back to the run's limiter with each answer. The key is read from
the environment only and never logged.
"""

from __future__ import annotations

import functools
import json
import os

from vichat.plugin import hookimpl, JudgeSpec

KEY_VAR = "OPENAI_API_KEY"
DEFAULT_MODEL = "gpt-4"


@functools.lru_cache(maxsize=16)
def _client(key: str | None, base_url: str | None, timeout: float):
    # One pooled, thread-safe client per endpoint; its own retries are off because the run
    # retries with backoff under a shared rate limit, and counts every attempt.
    from openai import OpenAI

    return OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)


def classify(exc: Exception, model: str) -> Exception:
    """The error the run acts on for an exception of the openai client: retry, stop, or fail."""
    import openai

    from vichat.plugin import FatalJudgeError
    from vichat.plugin import RetryableError, parse_retry_after

    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    wait = parse_retry_after(response.headers.get("retry-after")) if response is not None else None
    if isinstance(exc, (openai.APIConnectionError, json.JSONDecodeError, openai.APIResponseValidationError)):
        return RetryableError(f"{type(exc).__name__}: {exc}")  # timeouts, resets, a garbled body
    if status == 429 and getattr(exc, "code", None) == "insufficient_quota":
        return FatalJudgeError(f"the OpenAI account has no quota left: {getattr(exc, 'message', exc)}")
    if status in (401, 403):
        return FatalJudgeError(f"the endpoint rejected the key (HTTP {status}); check {KEY_VAR}")
    if status == 404:
        return FatalJudgeError(f"judge model {model!r} not found at the endpoint (pass --judge-model): {getattr(exc, 'message', exc)}")
    if status is not None and (status >= 500 or status in (408, 409, 429)):
        return RetryableError(f"HTTP {status}: {getattr(exc, 'message', exc)}", wait)
    return exc


def announced_limits(headers) -> tuple[float | None, float | None] | None:  # noqa: ANN001
    """``(requests, tokens)`` per minute from OpenAI's ``x-ratelimit-limit-*`` headers, or None."""
    out = []
    for name in ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"):
        try:
            out.append(float(headers.get(name)))
        except (TypeError, ValueError):
            out.append(None)
    return None if out == [None, None] else (out[0], out[1])


def make_sender(model: str, *, temperature: float, max_tokens: int, base_url: str | None, timeout: float):
    """A ``send(messages) -> Reply`` for :func:`vichat.evaluate.conversation.converse`."""
    import openai

    from vichat.plugin import FatalJudgeError, Reply
    from vichat.plugin import RetryableError

    key = os.environ.get(KEY_VAR)
    if not key:
        raise FatalJudgeError(f"the openai judge needs {KEY_VAR} (any value for a local server without keys)")
    client = _client(key, base_url or os.environ.get("OPENAI_BASE_URL") or None, float(timeout))

    def send(messages: list[dict]) -> Reply:
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=messages, temperature=float(temperature), max_tokens=int(max_tokens)
            )
            resp = raw.parse()
        except (openai.OpenAIError, json.JSONDecodeError) as exc:
            mapped = classify(exc, model)
            if mapped is exc:
                raise
            raise mapped from exc
        choice = resp.choices[0] if resp.choices else None
        content = choice.message.content if choice is not None else None
        if not isinstance(content, str):
            raise RetryableError("the answer has no message content")
        usage = resp.usage
        return Reply(
            text=content,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            finish_reason=choice.finish_reason,
            limits=announced_limits(raw.headers),
        )

    return send


def judge(
    question: str, answer1: str, answer2: str, prompt, *, model: str, temperature: float,  # noqa: ANN001
    max_tokens: int, aspects: bool, policy, registry, base_url: str | None, timeout: float,  # noqa: ANN001
):
    """Judge one pair of answers with ``prompt`` (a :class:`vichat.evaluate.prompts.JudgePrompt`);
    vichat passes every keyword (see :class:`vichat.specs.JudgeSpec`)."""
    from vichat.plugin import converse

    send = make_sender(str(model), temperature=temperature, max_tokens=max_tokens, base_url=base_url, timeout=timeout)
    return converse(send, question, answer1, answer2, prompt, policy=policy, aspects=bool(aspects))


@hookimpl
def register_judges(register):
    register(
        JudgeSpec(
            name="openai",
            description="OpenAI chat API or any OpenAI-compatible server (OPENAI_BASE_URL); default gpt-4, the paper's judge.",
            judge=judge,
            env_vars=(KEY_VAR,),
            default_model=DEFAULT_MODEL,
            # --base-url and --timeout of `vichat eval judge` fill these (transport: not in the cache key).
            options={"base_url": None, "timeout": 120.0},
            uses_policy=True,  # each request goes through converse(): limits, retries and cost per request
        )
    )
