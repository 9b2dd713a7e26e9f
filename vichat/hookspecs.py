"""The whole plugin contract: one ``register_*`` hook per kind of component.

Each hook receives ``register`` and calls it once per component with a spec object from
:mod:`vichat.specs`. The host validates every spec, records which plugin registered it, and keeps
going when one plugin fails. docs/plugins.md documents every hook (a test checks that).
"""

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("vichat")
hookimpl = pluggy.HookimplMarker("vichat")


@hookspec
def register_datasets(register: Callable) -> None:
    """Register instruction datasets.

    :param register: call ``register(DatasetSpec(...))`` once per dataset.
    """


@hookspec
def register_base_models(register: Callable) -> None:
    """Register base models that LoRA adapters are trained on and served from.

    :param register: call ``register(BaseModelSpec(...))`` once per base model.
    """


@hookspec
def register_translators(register: Callable) -> None:
    """Register machine translators.

    :param register: call ``register(TranslatorSpec(...))`` once per translator.
    """


@hookspec
def register_judges(register: Callable) -> None:
    """Register pairwise answer judges.

    :param register: call ``register(JudgeSpec(...))`` once per judge.
    """


@hookspec
def register_templates(register: Callable) -> None:
    """Register prompt templates.

    :param register: call ``register(TemplateSpec(...))`` once per template.
    """


@hookspec
def register_judge_prompts(register: Callable) -> None:
    """Register sets of versioned judge prompts (JSON Lines files).

    :param register: call ``register(JudgePromptsSpec(...))`` once per prompt set.
    """
