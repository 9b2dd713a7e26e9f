"""Judge prompts: versioned data, read from the package and from directories plugins or users add.

A prompt file is JSON Lines, one prompt per line (see ``vichat/evaluate/prompts/vicuna.jsonl``,
the paper's three GPT-4 judge prompts from FastChat, Apache-2.0)::

    {"prompt_id": "vicuna-general", "version": 1, "set": "vicuna", "category": "general",
     "applies_to": ["*"], "output": "pair", "system_prompt": "...", "prompt_template":
     "[Question]\\n{question}\\n...{answer_1}...{answer_2}...{prompt}", "instruction": "...",
     "reask": "...", "aspects_request": "...", "description": "...", "source": "...", "license": "..."}

``applies_to`` lists the question categories the prompt judges (``"*"``: any category without a
prompt of its own). Where prompts come from, in order: the prompt sets plugins register with the
``register_judge_prompts`` hook (the built-in ``judge-prompts`` plugin registers the package's
``vicuna`` set), the files or directories in ``$VICHAT_JUDGE_PROMPTS`` (``os.pathsep``-separated),
and ``--prompts PATH`` on the command line. The same ``prompt_id`` and ``version`` defined twice with
different text is an error naming both places: a version must always mean the same words, since
reviews and the judgment cache refer to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..records import VichatError

ENV_VAR = "VICHAT_JUDGE_PROMPTS"
OUTPUTS = ("pair", "tuple")
REQUIRED = ("prompt_id", "version", "set", "system_prompt", "prompt_template", "instruction")
_FIELD = re.compile(r"\{(question|answer_1|answer_2|prompt)\}")


@dataclass(frozen=True)
class JudgePrompt:
    """One versioned judge prompt; ``render`` fills it without ``str.format`` (answers hold braces)."""

    prompt_id: str
    version: int
    set: str
    system_prompt: str
    prompt_template: str
    instruction: str
    category: str = "general"
    applies_to: tuple[str, ...] = ("*",)
    output: str = "pair"
    reask: str = ""
    aspects_request: str = ""
    description: str = ""
    source: str = ""
    license: str = ""
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """``prompt_id@vN``: what reviews record."""
        return f"{self.prompt_id}@v{self.version}"

    @property
    def fingerprint(self) -> str:
        """sha256 of every word sent to the judge (part of the cache key, beside the version)."""
        material = "\x00".join(
            (self.system_prompt, self.prompt_template, self.instruction, self.reask, self.aspects_request)
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def render(self, question: str, answer1: str, answer2: str) -> str:
        """The user message for one pair of answers."""
        values = {"question": question, "answer_1": answer1, "answer_2": answer2, "prompt": self.instruction}
        return _FIELD.sub(lambda m: values[m.group(1)], self.prompt_template)

    def messages(self, question: str, answer1: str, answer2: str) -> list[dict[str, str]]:
        """Chat messages: the system prompt, then the rendered question and answers."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.render(question, answer1, answer2)},
        ]


def _from_dict(data: dict, origin: str) -> JudgePrompt:
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise VichatError(f"{origin}: judge prompt lacks {', '.join(missing)}")
    output = data.get("output", "pair")
    if output not in OUTPUTS:
        raise VichatError(f"{origin}: output={output!r} must be one of {', '.join(OUTPUTS)}")
    try:
        version = int(data["version"])
    except (TypeError, ValueError):
        raise VichatError(f"{origin}: version={data['version']!r} must be an integer") from None
    template = str(data["prompt_template"])
    for name in ("{question}", "{answer_1}", "{answer_2}"):
        if name not in template:
            raise VichatError(f"{origin}: prompt_template must contain {name}")
    applies = data.get("applies_to", ["*"])
    if isinstance(applies, str) or not all(isinstance(a, str) for a in applies):
        raise VichatError(f"{origin}: applies_to must be a list of category names")
    return JudgePrompt(
        prompt_id=str(data["prompt_id"]), version=version, set=str(data["set"]),
        system_prompt=str(data["system_prompt"]), prompt_template=template,
        instruction=str(data["instruction"]), category=str(data.get("category", "general")),
        applies_to=tuple(applies), output=output, reask=str(data.get("reask", "")),
        aspects_request=str(data.get("aspects_request", "")), description=str(data.get("description", "")),
        source=str(data.get("source", "")), license=str(data.get("license", "")), origin=origin,
    )


def read_prompt_file(path: Path) -> list[JudgePrompt]:
    """The prompts in one ``.jsonl`` file; a bad line is an error naming ``path:line``."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise VichatError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise VichatError(f"{path}:{n}: a judge prompt must be a JSON object")
            out.append(_from_dict(data, f"{path}:{n}"))
    return out


def _files(location: Path) -> list[Path]:
    if location.is_dir():
        return sorted(location.glob("*.jsonl"))
    if location.is_file():
        return [location]
    raise VichatError(f"{location}: no such judge prompt file or directory (check --prompts / ${ENV_VAR})")


def package_prompts_dir() -> Path:
    """The folder of the prompt sets shipped with vichat (registered by the ``judge-prompts`` plugin)."""
    return Path(str(resources.files("vichat.evaluate") / "prompts"))


def prompt_sources(extra: Iterable[str | Path] = (), prompt_sets: Iterable[Any] | None = None) -> list[Path]:
    """The registered prompt sets (``prompt_sets``: JudgePromptsSpec objects the caller took from
    its registry; None: the sets shipped with vichat), then ``$VICHAT_JUDGE_PROMPTS``, then ``extra``."""
    files: list[Path] = []
    if prompt_sets is None:
        files.extend(_files(package_prompts_dir()))
    else:
        for spec in prompt_sets:
            files.extend(_files(Path(spec.path)))
    env = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]
    for location in [*env, *extra]:
        files.extend(_files(Path(location)))
    return files


class PromptBook:
    """Every known judge prompt, by ``(prompt_id, version)``."""

    def __init__(self, prompts: Iterable[JudgePrompt]) -> None:
        self.prompts: dict[tuple[str, int], JudgePrompt] = {}
        for p in prompts:
            old = self.prompts.get((p.prompt_id, p.version))
            if old is not None and old.fingerprint != p.fingerprint:
                raise VichatError(
                    f"judge prompt {p.key} is defined twice with different text: {old.origin} and {p.origin}; "
                    "give the changed one a new version"
                )
            self.prompts.setdefault((p.prompt_id, p.version), p)

    def sets(self) -> list[str]:
        return sorted({p.set for p in self.prompts.values()})

    def latest(self, prompt_set: str, version: int | None = None) -> list[JudgePrompt]:
        """The prompts of ``prompt_set``: each prompt id at ``version`` (default: its newest)."""
        chosen: dict[str, JudgePrompt] = {}
        for p in sorted(self.prompts.values(), key=lambda p: p.version):
            if p.set == prompt_set and (version is None or p.version == version):
                chosen[p.prompt_id] = p
        if not chosen:
            what = f"{prompt_set!r}" + (f" at version {version}" if version is not None else "")
            raise VichatError(
                f"no judge prompt set {what}; known sets: {', '.join(self.sets()) or '(none: is vichat installed with its package data?)'}"
            )
        return list(chosen.values())

    def for_category(self, category: str, prompt_set: str = "vicuna", version: int | None = None) -> JudgePrompt:
        """The prompt that judges questions of ``category`` (coding and math get their own)."""
        candidates = self.latest(prompt_set, version)
        for p in candidates:
            if category in p.applies_to:
                return p
        for p in candidates:
            if "*" in p.applies_to:
                return p
        raise VichatError(f"judge prompt set {prompt_set!r} has no prompt for category {category!r} and no '*' prompt")


def load_prompts(extra: Sequence[str | Path] = (), prompt_sets: Iterable[Any] | None = None) -> PromptBook:
    """All prompts from :func:`prompt_sources`."""
    prompts: list[JudgePrompt] = []
    for path in prompt_sources(extra, prompt_sets):
        prompts.extend(read_prompt_file(path))
    return PromptBook(prompts)
