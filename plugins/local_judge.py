"""The ``local`` judge: a model loaded in-process through a base-model plugin judges the answers.

``vichat eval judge --judge local --judge-model NAME [--option base_path=DIR]``: ``NAME`` is a
registered base model (``vichat plugins``); ``base_path`` a local folder with its weights (default:
the model's hub id), as ``--base-path`` everywhere else. The chat messages go through the tokenizer's chat template when it has one and a
plain "System/User/Assistant" layout otherwise. Decoding is greedy unless ``temperature`` > 0.
No key, no network, no cost; one model stays loaded per process and generation is serialised
(one model cannot run two ``generate`` calls at once safely), so ``--concurrency`` does not help.
torch and transformers are imported only when a judgment runs.
"""

from __future__ import annotations

import threading

from vichat.plugin import hookimpl, JudgeSpec

_models: dict = {}
_load_lock = threading.Lock()
_generate_lock = threading.Lock()


def load(model: str, path: str | None, registry):  # noqa: ANN001
    """``(model, tokenizer)`` for base model ``model`` (registered in ``registry``) from ``path``,
    loaded once per process."""
    from vichat.plugin import FatalJudgeError, load_base

    key = (model, path)
    with _load_lock:
        if key not in _models:
            if registry is None:
                raise FatalJudgeError("the local judge looks its model up in the plugin registry, and none was given")
            spec = registry.base_model(model)
            lm, tokenizer = load_base(spec, path)
            lm.eval()
            _models[key] = (lm, tokenizer)
        return _models[key]


def render_chat(tokenizer, messages: list[dict]) -> str:  # noqa: ANN001
    """The text the model continues: its own chat template, else a plain layout."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def make_sender(model: str, path: str | None, *, temperature: float, max_tokens: int, registry=None):  # noqa: ANN001
    """A ``send(messages) -> Reply`` that generates with the local model."""
    from vichat.plugin import FatalJudgeError, Reply

    if not model:
        raise FatalJudgeError("the local judge needs --judge-model NAME (a base model listed by `vichat plugins`)")
    lm, tokenizer = load(model, path, registry)

    def send(messages: list[dict]) -> Reply:
        import torch

        text = render_chat(tokenizer, messages)
        inputs = tokenizer(text, return_tensors="pt").to(lm.device)
        kwargs = {"max_new_tokens": int(max_tokens), "pad_token_id": tokenizer.pad_token_id}
        if float(temperature) > 0:
            kwargs.update(do_sample=True, temperature=float(temperature))
        else:
            kwargs.update(do_sample=False)
        with _generate_lock, torch.no_grad():
            out = lm.generate(**inputs, **kwargs)
        n_in = inputs["input_ids"].shape[1]
        new = out[0][n_in:]
        return Reply(
            text=tokenizer.decode(new, skip_special_tokens=True).strip(),
            prompt_tokens=int(n_in),
            completion_tokens=int(new.shape[0]),
            finish_reason="length" if new.shape[0] >= int(max_tokens) else "stop",
        )

    return send


def judge(
    question: str, answer1: str, answer2: str, prompt, *, model: str, temperature: float,  # noqa: ANN001
    max_tokens: int, aspects: bool, policy, registry, base_path: str | None,  # noqa: ANN001
):
    """Judge one pair of answers with a local model (vichat passes every keyword: see JudgeSpec)."""
    from vichat.plugin import converse

    send = make_sender(str(model), base_path, temperature=temperature, max_tokens=max_tokens, registry=registry)
    return converse(send, question, answer1, answer2, prompt, policy=policy, aspects=bool(aspects))


@hookimpl
def register_judges(register):
    register(
        JudgeSpec(
            name="local",
            description="A base model loaded in-process judges (--judge-model NAME, --option base_path=DIR); no key, "
                        "no cost.",
            judge=judge,
            price=(0.0, 0.0),
            options={"base_path": None},
            uses_policy=True,  # converse() counts each request (generation is local: no limits apply)
        )
    )
