"""The ``identity`` translator: returns texts unchanged. For tests and dry pipelines (costs nothing)."""

from vichat.plugin import hookimpl, TranslatorSpec


def translate(texts: list[str], source: str, target: str) -> list[str]:
    """Return ``texts`` as they are (it takes no options)."""
    return list(texts)


@hookimpl
def register_translators(register):
    register(
        TranslatorSpec(
            name="identity",
            description="Returns texts unchanged (for tests and dry pipelines; sends nothing).",
            translate=translate,
            max_batch_size=256,
            max_batch_chars=100_000,
            cost_per_million_chars=0.0,
        )
    )
