"""`vichat eval generate`: answers to a question set, in FastChat's answer format.

Each line: ``{"question_id", "text", "answer_id", "model_id", "metadata"}`` where ``metadata``
records the decoding (the paper's: max_new_tokens 256, temperature 0.5, top_k 20,
repetition_penalty 1.2), the template, the seed, the base model and adapter. Generation stops at
EOS or at the template's stop marker ("### Instruction:", where a model starts a new turn).
Answers are appended as they finish; a rerun skips the questions already answered, so an
interrupted run resumes (a half-written last line from a kill is dropped and redone).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..records import VichatError, clean_generated, nfc
from ..specs import Decoding
from .files import Question, check_out_path, question_fingerprint, set_name_for, short_id


@dataclass(frozen=True)
class GenerationSettings(Decoding):
    """Decoding settings written to every answer's metadata: the paper's defaults, a seed, a template."""

    seed: int = 0
    template: str = "chat"

    def generate_kwargs(self) -> dict[str, Any]:
        return self.as_generate_kwargs()


def batch_seed(seed: int, question_id: Any) -> int:
    """The torch seed of a batch: from ``--seed`` and its first question, not from its position,
    so a resumed run samples what an uninterrupted one would have."""
    return int(hashlib.sha256(f"{seed}:{question_id}".encode("utf-8")).hexdigest()[:8], 16)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first stop marker, stripped."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if s and i >= 0:
            cut = min(cut, i)
    return text[:cut].strip()


def existing_answers(path: Path) -> dict[Any, dict]:
    """Answers already in ``path`` by question id; drops a torn last line left by a kill."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    done: dict[Any, dict] = {}
    keep = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            keep += len(line)
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not line.endswith("\n"):
                with open(path, "r+", encoding="utf-8") as f:  # torn by a kill: redo that answer
                    f.truncate(len("".join(lines[: n - 1]).encode("utf-8")))
                break
            raise VichatError(f"{path}:{n}: not JSON; fix or remove the file (or choose another --out)") from None
        done[obj.get("question_id")] = obj
    return done


def generate_answers(
    questions: Mapping[Any, Question], loaded: Any, template: Any, settings: GenerationSettings, out: Path, *,
    batch_size: int = 8, limit: int | None = None, progress: bool | None = None,
    on_answer: Callable[[dict], None] = lambda a: None, question_set: str | None = None,
) -> tuple[int, int]:
    """Answer the questions not yet in ``out``; returns ``(written, already there)``.

    :param loaded: a :class:`vichat.evaluate.loading.LoadedModel`.
    :param template: a :class:`vichat.specs.TemplateSpec` (its ``stop`` markers end an answer).
    :param question_set: the set's name (or the questions file's), recorded in each answer's
        metadata with a fingerprint of the question's text, so judging can refuse answers to
        other questions.
    """
    import torch
    from tqdm.auto import tqdm

    from ..data.templates import render_prompt

    meta = {**asdict(settings), "stop": list(template.stop), "base_model": loaded.base_model, "adapter": loaded.adapter,
            "question_set": question_set}
    done = existing_answers(out)
    for qid, ans in done.items():
        old = ans.get("metadata") or {}
        # Files from before question sets were recorded lack the key: those are not "other settings".
        optional = {"adapter"} | ({"question_set"} if "question_set" not in old else set())
        if ans.get("model_id") != loaded.model_id or any(old.get(k) != v for k, v in meta.items() if k not in optional):
            raise VichatError(
                f"{out} already holds answers from another model or other settings (question {qid!r}); "
                "use another --out, or delete the file to start over"
            )
        q = questions.get(qid)
        if q is not None and old.get("question_fingerprint") not in (None, question_fingerprint(q.text)):
            raise VichatError(
                f"{out} already holds an answer to another question {qid!r} (of {old.get('question_set')}); "
                "use another --out, or delete the file to start over"
            )
    todo = [q for q in questions.values() if q.question_id not in done][: limit if limit is not None else None]
    model, tok = loaded.model, loaded.tokenizer
    model.eval()
    tok.padding_side = "left"  # generation continues on the right: pad on the left
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    kwargs = settings.generate_kwargs()
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), unit="answer", desc=f"generate ({loaded.model_id})",
                                                     disable=(not progress) if progress is not None else None) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            # One seed per batch, derived from the first question: a resumed run draws the same.
            torch.manual_seed(batch_seed(settings.seed, batch[0].question_id))
            # NFC, as in training and serving: a decomposed "ệ" would be other tokens than the model saw.
            prompts = [render_prompt(template, nfc(q.text)) for q in batch]
            enc = tok(prompts, return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad():
                gen = model.generate(**enc, **kwargs, stop_strings=list(template.stop), tokenizer=tok,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for q, ids in zip(batch, new):
                text = cut_at_stop(clean_generated(tok.decode(ids, skip_special_tokens=True)), template.stop)
                answer = {"question_id": q.question_id, "text": text,
                          "answer_id": short_id(loaded.model_id, q.question_id, text),
                          "model_id": loaded.model_id,
                          "metadata": {**meta, "question_fingerprint": question_fingerprint(q.text)}}
                f.write(json.dumps(answer, ensure_ascii=False) + "\n")
                written += 1
                on_answer(answer)
            f.flush()
            bar.update(len(batch))
    return written, len(done)


def generate_job(
    model_ref: str, questions_path: str | Path, out: str | Path, *, template: Any,
    base_models: Sequence[Any], aliases: Mapping[str, str | Path] | None = None,
    decoding: Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 8,
    limit: int | None = None, base_path: str | None = None, load_in: str = "none", model_id: str | None = None,
    device: str = "auto", progress: bool | None = None, question_set: str | None = None,
) -> tuple[int, int]:
    """Load ``model_ref`` and answer the questions; see :func:`generate_answers`.

    :param template: the :class:`vichat.specs.TemplateSpec` to prompt with.
    :param base_models: the registered base models (see :func:`vichat.models.resolve`).
    :param aliases: other names for adapter folders (training presets -> their output folder).
    :param decoding: overrides of the model's decoding settings (the paper's by default).
    :param question_set: the ``--set`` name recorded in the answers [default: the set whose file
        ``questions_path`` is, else its file name].
    """
    from .files import default_category, load_questions

    check_out_path(out)  # before the model loads: not a traceback at the first write
    from .loading import load_for_generation

    questions = load_questions(questions_path, default_category(questions_path))
    tmpl = template
    loaded = load_for_generation(model_ref, base_models, base_path=base_path, load_in=load_in, aliases=aliases)
    if model_id:
        loaded.model_id = model_id
    if device != "cpu" and load_in == "none":
        import torch

        target = "cuda" if device == "auto" and torch.cuda.is_available() else (None if device == "auto" else device)
        if target:
            loaded.model.to(target)
    values = asdict(loaded.decoding)
    values.update({k: v for k, v in (decoding or {}).items() if v is not None})
    settings = GenerationSettings(**values, seed=seed, template=tmpl.name)
    return generate_answers(questions, loaded, tmpl, settings, Path(out), batch_size=batch_size, limit=limit,
                            progress=progress, question_set=question_set or set_name_for(questions_path))
