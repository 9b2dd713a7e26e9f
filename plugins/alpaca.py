"""Alpaca: Stanford's 52k self-instruct records (English) and their Vietnamese translations.

* ``alpaca`` — ``instruction`` / ``input`` / ``output``. Subset ``en`` (default) is the original
  tatsu-lab/stanford_alpaca ``alpaca_data.json``; subset ``vi`` is a Vietnamese translation with the
  same fields (bkai-foundation-models/vi-alpaca on the hub). From a local path the language is the
  subset when one is given, otherwise detected from the text.
* ``vi-alpaca`` — ``prompt`` / ``response``: the Vietnamese Alpaca of telexyz/GPT4VN (about 51k
  records translated from gururise/AlpacaDataCleaned), the general half of the paper's training data.

The original English data has 4 records with an empty ``output``; they are invalid (nothing to
train on), so loading it needs ``--skip-invalid``, which reports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from vichat.plugin import hookimpl, DatasetSpec, hub_rows, read_rows, Row, tag_rows, url_rows

ALPACA_URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"
ALPACA_HOMEPAGE = "https://github.com/tatsu-lab/stanford_alpaca"
ALPACA_VI_HUB = "bkai-foundation-models/vi-alpaca"
ALPACA_CITATION = (
    "@misc{alpaca, author = {Rohan Taori and Ishaan Gulrajani and Tianyi Zhang and Yann Dubois and "
    "Xuechen Li and Carlos Guestrin and Percy Liang and Tatsunori B. Hashimoto}, title = {Stanford "
    "Alpaca: An Instruction-following LLaMA model}, year = {2023}, publisher = {GitHub}, "
    "howpublished = {\\url{https://github.com/tatsu-lab/stanford_alpaca}}}"
)

# The 11 parts of telexyz/GPT4VN's Vietnamese Alpaca at the commit shared/data/MANIFEST.md cites.
GPT4VN_COMMIT = "d71c3e55b45fa782154a218b2282eaa814e49f0e"
VI_ALPACA_URLS = tuple(
    f"https://raw.githubusercontent.com/telexyz/GPT4VN/{GPT4VN_COMMIT}/data/.archive/"
    f"vi_alpaca_reduced.data/vi_alpaca_reduced_{i}.jsonl"
    for i in range(1, 12)
)
VI_ALPACA_HOMEPAGE = "https://github.com/telexyz/GPT4VN"


def load_alpaca(path: Path | None = None, subset: str | None = None) -> Iterator[Row]:
    """Rows of Alpaca: ``path`` if given, else the English original (or ``subset="vi"`` from the hub)."""
    if path is not None:
        rows = read_rows(path)
        # Without a subset, loading detects the language from the text (spec has two languages).
        return tag_rows(rows, language=subset) if subset else rows
    if subset == "vi":
        rows = hub_rows("alpaca", ALPACA_VI_HUB, homepage=f"https://huggingface.co/datasets/{ALPACA_VI_HUB}")
        return tag_rows(rows, language="vi")
    return tag_rows(url_rows("alpaca", [ALPACA_URL], homepage=ALPACA_HOMEPAGE), language="en")


def load_vi_alpaca(path: Path | None = None, subset: str | None = None) -> Iterator[Row]:
    """Rows of the GPT4VN Vietnamese Alpaca: ``path`` if given, else its 11 public JSONL parts."""
    if path is not None:
        return read_rows(path)
    return url_rows("vi-alpaca", VI_ALPACA_URLS, homepage=VI_ALPACA_HOMEPAGE)


ALPACA = DatasetSpec(
    name="alpaca",
    description="Stanford Alpaca 52k (instruction/input/output): the English original or a Vietnamese translation.",
    load=load_alpaca,
    languages=("en", "vi"),
    subsets=("en", "vi"),
    license="CC BY-NC 4.0 (tatsu-lab DATA_LICENSE); generated with OpenAI text-davinci-003",
    citation=ALPACA_CITATION,
    source=ALPACA_URL,
    homepage=ALPACA_HOMEPAGE,
    domain="general",
)

VI_ALPACA = DatasetSpec(
    name="vi-alpaca",
    description="Vietnamese Alpaca of telexyz/GPT4VN (~51k prompt/response, translated AlpacaDataCleaned).",
    load=load_vi_alpaca,
    languages=("vi",),
    license="none stated by GPT4VN; upstream Alpaca data is CC BY-NC 4.0 (non-commercial)",
    citation=ALPACA_CITATION + " Vietnamese translation: telexyz/GPT4VN (Tuộc and binhvq), " + VI_ALPACA_HOMEPAGE,
    source=VI_ALPACA_URLS[0].rsplit("_", 1)[0] + "_{1..11}.jsonl",
    homepage=VI_ALPACA_HOMEPAGE,
    domain="general",
)


@hookimpl
def register_datasets(register):
    register(ALPACA)
    register(VI_ALPACA)
