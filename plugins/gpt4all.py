"""GPT4All prompt generations: ~400k prompt/response pairs distilled from GPT-3.5-Turbo.

* subset ``en`` (default when fetching): the hub dataset ``nomic-ai/gpt4all_prompt_generations``
  (fields ``prompt``, ``response``, ``source``);
* subset ``vi``: the Vietnamese translation of telexyz/GPT4VN (``vi_gpt4all_reduced_00.jsonl`` and
  ``_01.jsonl``, ~173k records, ``prompt`` / ``response``), the GPT4All half of the paper's chat
  data. shared/data/MANIFEST.md notes these files are too large to fetch from GitHub's raw server
  in some settings: download them once and pass ``--path`` (or ``--source gpt4all=FILE``), or set
  ``VICHAT_DATASET_URL_GPT4ALL_VI`` to a mirror.

From a local path the language is the subset when given, otherwise detected from the text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vichat.plugin import hookimpl, DatasetSpec, hub_rows, read_rows, Row, tag_rows, url_rows

GPT4ALL_HUB = "nomic-ai/gpt4all_prompt_generations"
GPT4ALL_HOMEPAGE = "https://github.com/nomic-ai/gpt4all"
VI_GPT4ALL_URLS = tuple(
    f"https://raw.githubusercontent.com/telexyz/GPT4VN/main/vi_gpt4all_reduced_0{i}.jsonl" for i in (0, 1)
)
VI_GPT4ALL_HOMEPAGE = "https://github.com/telexyz/GPT4VN"
GPT4ALL_CITATION = (
    "@misc{gpt4all, author = {Yuvanesh Anand and Zach Nussbaum and Brandon Duderstadt and Benjamin "
    "Schmidt and Andriy Mulyar}, title = {GPT4All: Training an Assistant-style Chatbot with Large "
    "Scale Data Distillation from GPT-3.5-Turbo}, year = {2023}, publisher = {GitHub}, "
    "howpublished = {\\url{https://github.com/nomic-ai/gpt4all}}}"
)


def load_gpt4all(path: Path | None = None, subset: str | None = None) -> Iterator[Row]:
    """Rows of GPT4All: ``path`` if given, else the hub dataset (``en``) or GPT4VN's files (``vi``)."""
    if path is not None:
        rows = read_rows(path)
        return tag_rows(rows, language=subset) if subset else rows
    if subset == "vi":
        return tag_rows(url_rows("gpt4all", VI_GPT4ALL_URLS, homepage=VI_GPT4ALL_HOMEPAGE, subset="vi"), language="vi")
    homepage = f"https://huggingface.co/datasets/{GPT4ALL_HUB}"
    return tag_rows(hub_rows("gpt4all", GPT4ALL_HUB, homepage=homepage), language="en")


GPT4ALL = DatasetSpec(
    name="gpt4all",
    description="GPT4All prompt generations (prompt/response), English original or GPT4VN's Vietnamese translation.",
    load=load_gpt4all,
    languages=("en", "vi"),
    subsets=("en", "vi"),
    license="Apache-2.0 (nomic-ai dataset card); responses are GPT-3.5-Turbo outputs (OpenAI terms of use)",
    citation=GPT4ALL_CITATION,
    source=GPT4ALL_HUB,
    homepage=GPT4ALL_HOMEPAGE,
    domain="general",
)


@hookimpl
def register_datasets(register):
    register(GPT4ALL)
