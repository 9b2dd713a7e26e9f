"""`vichat tiny eval`: do the tiny adapters change what the model does? Measured on held-out pairs.

On the bundled held-out records (:data:`vichat.tiny.parts.HELDOUT_FILES`, which neither the base
nor the adapters train on):

* **response loss**: for each adapter, the mean cross-entropy per response token (EOS included) of
  its domain's held-out records rendered with its template, for the adapter and for the bare base on
  exactly the same tokens (the way the trainer scores validation);
* **generation**: every held-out question asked the way the app asks it (the served template, the
  ``tiny`` base model's decoding defaults with temperature 0, i.e. greedy), to the base (``chat``
  template, as the offline demo serves it), ``tiny-chat`` and ``tiny-doctor``: the share of answers
  that end with EOS before ``max_new_tokens``, the share whose raw output contains a template marker
  (``### Instruction:`` / ``### Response:``: the app cuts the answer there), and the share of questions
  on which tiny-chat and tiny-doctor answer differently (answers compared as the app shows them).

torch, transformers and peft are imported inside the functions.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from typing import Any, Callable, Sequence

from ..specs import TemplateSpec
from .parts import ADAPTER_DATA, Pair, heldout_pairs, normalize

#: The goals the numbers are checked against (the report says which are met).
GOALS = {"loss_reduction": 0.10, "adapter_eos_share": 0.80, "chat_doctor_differ_share": 0.90}
BASE = "tiny"
#: Template the app serves each model with (vichat/serve/configs/tiny.yaml).
SERVED_TEMPLATE = {BASE: "chat", **{name: v[2] for name, v in ADAPTER_DATA.items()}}


def response_loss(model: Any, tokenizer: Any, pairs: Sequence[Pair], template: TemplateSpec) -> tuple[float, int]:
    """Summed response-token NLL and token count of ``pairs`` (tokenised as for training, untruncated)."""
    import torch

    from ..data.tokenize import tokenize_record

    total, n = 0.0, 0
    with torch.inference_mode():
        for pair in pairs:
            ex = tokenize_record({"instruction": pair.instruction, "input": pair.input, "output": pair.output},
                                 tokenizer, template, max_length=100_000)
            ids = torch.tensor([ex["input_ids"]])
            labels = torch.tensor(ex["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1].float()
            mask = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            n += int(mask.sum())
    return total, n


def generate_answers(model: Any, tokenizer: Any, messages: Sequence[str], template: TemplateSpec, decoding: Any,
                     batch_size: int = 16) -> list[dict[str, Any]]:
    """Greedy answers to ``messages`` as the app would prompt them: ``{"ids", "eos", "raw", "text"}``
    (``raw``: the decoded output before EOS; ``text``: what the app shows, cut at a stop marker)."""
    import torch

    from ..data.templates import fold_history, stop_markers
    from ..data.tokenize import encode_text

    tpl = template
    markers = stop_markers(tpl)
    prefix = [tokenizer.bos_token_id] if getattr(tokenizer, "add_bos_token", False) else []
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    kwargs = decoding.as_generate_kwargs()
    out: list[dict[str, Any]] = []
    with torch.inference_mode():
        for start in range(0, len(messages), batch_size):
            prompts = [prefix + encode_text(tokenizer, fold_history(tpl, m)) for m in messages[start:start + batch_size]]
            width = max(map(len, prompts))
            # Left padding, so every answer starts at the same position; the attention mask keeps
            # the padding out (BLOOM's ALiBi positions follow the mask).
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            gen = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=eos, pad_token_id=pad, **kwargs)
            for row in gen[:, width:].tolist():
                ended = eos in row
                body = row[:row.index(eos)] if ended else row
                raw = tokenizer.decode(body, skip_special_tokens=True)
                text = raw
                for m in markers:
                    if m in text:
                        text = text[:text.index(m)]
                out.append({"ids": body, "eos": ended, "raw": raw, "text": text.strip(),
                            "leak": any(m in raw for m in markers)})
    return out


def _share(flags: Sequence[bool]) -> float:
    return round(sum(map(bool, flags)) / len(flags), 4) if flags else float("nan")


def evaluate_models(model: Any, tokenizer: Any, decoding: Any, adapters: Sequence[str], *, registry: Any,
                    limit: int | None = None, echo: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """The evaluation on ``model``: a PeftModel holding ``adapters`` (named after them), whose
    ``disable_adapter()`` gives the bare base. ``decoding``: the app's decoding (made greedy here);
    ``registry``: the plugin registry the served templates are looked up in."""
    t0 = time.perf_counter()
    greedy = replace(decoding, temperature=0.0)
    held = {name: heldout_pairs(name)[:limit] if limit else heldout_pairs(name) for name in adapters}
    templates = {name: registry.template(t) for name, t in SERVED_TEMPLATE.items()}
    model.eval()

    loss: dict[str, Any] = {}
    for name in adapters:
        template = templates[name]
        model.set_adapter(name)
        a_sum, n = response_loss(model, tokenizer, held[name], template)
        with model.disable_adapter():
            b_sum, _ = response_loss(model, tokenizer, held[name], template)
        base, adapted = b_sum / n, a_sum / n
        loss[name] = {"records": len(held[name]), "template": template.name, "response_tokens": n,
                      "base": round(base, 4), "adapter": round(adapted, 4),
                      "reduction": round(1 - adapted / base, 4),
                      "base_perplexity": round(math.exp(base), 2), "adapter_perplexity": round(math.exp(adapted), 2)}
        echo(f"eval: {name} held-out response loss {adapted:.3f} vs base {base:.3f} "
             f"({loss[name]['reduction']:.1%} lower, {n} tokens)")

    questions = [p for name in adapters for p in held[name]]
    messages = [p.message for p in questions]
    answers: dict[str, list[dict[str, Any]]] = {}
    with model.disable_adapter():
        answers[BASE] = generate_answers(model, tokenizer, messages, templates[BASE], greedy)
    for name in adapters:
        model.set_adapter(name)
        answers[name] = generate_answers(model, tokenizer, messages, templates[name], greedy)
    generation = {}
    for name, ans in answers.items():
        generation[name] = {"template": SERVED_TEMPLATE[name], "questions": len(ans),
                            "eos_share": _share([a["eos"] for a in ans]),
                            "marker_share": _share([a["leak"] for a in ans]),
                            "mean_new_tokens": round(sum(len(a["ids"]) + a["eos"] for a in ans) / len(ans), 1),
                            "empty_share": _share([not a["text"] for a in ans])}
        echo(f"eval: {name} answers ending with EOS {generation[name]['eos_share']:.0%}, "
             f"leaking a template marker {generation[name]['marker_share']:.0%}")
    result: dict[str, Any] = {"heldout": {n: {"file": ADAPTER_DATA[n][1], "records": len(held[n])} for n in adapters},
                              "decoding": asdict(greedy), "loss": loss, "generation": generation}
    if {"tiny-chat", "tiny-doctor"} <= set(adapters):
        differ = [normalize(a["text"]) != normalize(b["text"])
                  for a, b in zip(answers["tiny-chat"], answers["tiny-doctor"])]
        result["chat_vs_doctor"] = {"questions": len(differ), "differ_share": _share(differ)}
        echo(f"eval: tiny-chat and tiny-doctor answer differently on {result['chat_vs_doctor']['differ_share']:.0%}"
             f" of {len(differ)} questions")
    result["goals"] = goals(result)
    result["examples"] = [{"id": p.id, "question": p.message,
                           **{name: answers[name][i]["text"] for name in answers}}
                          for i, p in enumerate(questions) if i % max(1, len(questions) // 4) == 0][:4]
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """Each goal with the measured value and whether it is met."""
    out: dict[str, Any] = {}
    for name, v in result["loss"].items():
        out[f"{name}: response loss >= {GOALS['loss_reduction']:.0%} below the base"] = {
            "value": v["reduction"], "target": GOALS["loss_reduction"], "met": v["reduction"] >= GOALS["loss_reduction"]}
    for name, v in result["generation"].items():
        if name == BASE:
            continue
        out[f"{name}: answers ending with EOS >= {GOALS['adapter_eos_share']:.0%}"] = {
            "value": v["eos_share"], "target": GOALS["adapter_eos_share"], "met": v["eos_share"] >= GOALS["adapter_eos_share"],
            "base": result["generation"][BASE]["eos_share"]}
    if "chat_vs_doctor" in result:
        v = result["chat_vs_doctor"]["differ_share"]
        out[f"tiny-chat and tiny-doctor answers differ >= {GOALS['chat_doctor_differ_share']:.0%}"] = {
            "value": v, "target": GOALS["chat_doctor_differ_share"], "met": v >= GOALS["chat_doctor_differ_share"]}
    return out


def evaluate_build(base_dir: Any, adapter_dirs: dict[str, Any], *, registry: Any, limit: int | None = None,
                   echo: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Load a build's base and adapters and run :func:`evaluate_models` with the ``tiny`` model's
    decoding defaults (what the app serves it with); ``registry``: the caller's plugin registry."""
    from peft import PeftModel

    from ..models import load_base

    spec = registry.base_model(BASE)

    model, tokenizer = load_base(spec, str(base_dir))
    names = [n for n in ADAPTER_DATA if n in adapter_dirs]
    if not names:
        raise ValueError("no adapters to evaluate")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dirs[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(str(adapter_dirs[name]), adapter_name=name)
    return evaluate_models(peft_model, tokenizer, spec.decoding, names, registry=registry, limit=limit, echo=echo)


def format_eval(result: dict[str, Any]) -> list[str]:
    """Lines for people: the loss table, the generation table, the goals."""
    lines = ["held-out response loss (mean per response token, EOS included):",
             f"  {'adapter':<12} {'records':>7} {'tokens':>7} {'base':>7} {'adapter':>8} {'lower by':>9}"]
    for name, v in result["loss"].items():
        lines.append(f"  {name:<12} {v['records']:>7} {v['response_tokens']:>7} {v['base']:>7.3f} "
                     f"{v['adapter']:>8.3f} {v['reduction']:>9.1%}")
    d = result["decoding"]
    lines.append(f"greedy answers to the held-out questions (max_new_tokens {d['max_new_tokens']}, "
                 f"repetition_penalty {d['repetition_penalty']}):")
    lines.append(f"  {'model':<12} {'template':<8} {'questions':>9} {'EOS':>6} {'marker':>7} {'tokens':>7}")
    for name, v in result["generation"].items():
        lines.append(f"  {name:<12} {v['template']:<8} {v['questions']:>9} {v['eos_share']:>6.0%} "
                     f"{v['marker_share']:>7.0%} {v['mean_new_tokens']:>7.1f}")
    if "chat_vs_doctor" in result:
        c = result["chat_vs_doctor"]
        lines.append(f"tiny-chat and tiny-doctor answer differently on {c['differ_share']:.0%} of {c['questions']} questions")
    lines.append("goals:")
    for goal, v in result["goals"].items():
        extra = f" (base {v['base']:.0%})" if "base" in v else ""
        lines.append(f"  [{'met' if v['met'] else 'MISSED'}] {goal}: {v['value']:.1%}{extra}")
    return lines
