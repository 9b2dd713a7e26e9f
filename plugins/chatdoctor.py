"""ChatDoctor: patient questions and doctor answers (Li et al., 2023), the paper's medical data.

Subsets:

* ``healthcaremagic`` — ~112k real conversations from HealthCareMagic.com (hub
  ``lavita/ChatDoctor-HealthCareMagic-100k``);
* ``icliniq`` — ~7k conversations from iCliniq.com (hub ``lavita/ChatDoctor-iCliniq``: ``input``,
  ``answer_icliniq``, ``answer_chatgpt``, ``answer_chatdoctor``; the doctor's ``answer_icliniq`` is
  the output). The paper evaluates on iCliniq, so the default training set leaves it out;
* ``genmedgpt`` — GenMedGPT-5k, 5k synthetic ChatGPT dialogues (``chatdoctor5k.json`` of
  Kent0n-Li/ChatDoctor).

Without a subset, fetching loads the paper's training set: ``genmedgpt`` + ``healthcaremagic``.

Field mapping: in ChatDoctor files ``instruction`` is a constant preamble ("If you are a doctor,
please answer the medical questions based on the patient's description.") and ``input`` is the
patient's question. The preamble is what the ``doctor`` prompt template already says, so a record's
``instruction`` becomes the patient's question, its ``input`` is empty and the preamble is dropped.
A row whose ``instruction`` is not such a preamble (e.g. a translated ``prompt`` / ``response``
file) is mapped the usual way.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Iterator, Mapping

from vichat.plugin import hookimpl, DatasetSpec, hub_rows, read_rows, Row, url_rows

HOMEPAGE = "https://github.com/Kent0n-Li/ChatDoctor"
CHATDOCTOR_COMMIT = "e77bd7ebafbffb6d82be3410cd0d4ebebe75a516"
GENMEDGPT_URL = f"https://raw.githubusercontent.com/Kent0n-Li/ChatDoctor/{CHATDOCTOR_COMMIT}/chatdoctor5k.json"
HEALTHCAREMAGIC_HUB = "lavita/ChatDoctor-HealthCareMagic-100k"
ICLINIQ_HUB = "lavita/ChatDoctor-iCliniq"
SUBSETS = ("healthcaremagic", "icliniq", "genmedgpt")
TRAINING_SUBSETS = ("genmedgpt", "healthcaremagic")
CITATION = (
    "@article{li2023chatdoctor, title = {ChatDoctor: A Medical Chat Model Fine-Tuned on a Large "
    "Language Model Meta-AI (LLaMA) Using Medical Domain Knowledge}, author = {Li, Yunxiang and Li, "
    "Zihan and Zhang, Kai and Dan, Ruilong and Jiang, Steve and Zhang, You}, journal = {Cureus}, "
    "volume = {15}, number = {6}, year = {2023}, note = {arXiv:2303.14070}}"
)

# Opening words of the constant ChatDoctor preamble, in English and in its Vietnamese translation.
PREAMBLE_PREFIXES = ("if you are a doctor", "nếu bạn là bác sĩ")


def is_preamble(text: Any) -> bool:
    """True when ``text`` is ChatDoctor's constant "If you are a doctor, ..." instruction."""
    if not isinstance(text, str):
        return False
    return unicodedata.normalize("NFC", text).strip().casefold().startswith(PREAMBLE_PREFIXES)


def map_row(data: Mapping[str, Any]) -> dict[str, Any]:
    """Map one ChatDoctor row so that ``instruction`` is the patient's question (see module doc)."""
    mapped = dict(data)
    if "answer_icliniq" in data and "output" not in data:
        mapped["instruction"] = data.get("input")
        mapped["input"] = ""
        mapped["output"] = data.get("answer_icliniq")
    elif is_preamble(data.get("instruction")) and isinstance(data.get("input"), str) and data["input"].strip():
        mapped["instruction"] = data["input"]
        mapped["input"] = ""
    return mapped


def _mapped(rows: Iterator[Row]) -> Iterator[Row]:
    for row in rows:
        yield Row(row.location, map_row(row.data)) if isinstance(row.data, Mapping) else row


def _fetch(subset: str) -> Iterator[Row]:
    if subset == "genmedgpt":
        return url_rows("chatdoctor", [GENMEDGPT_URL], homepage=HOMEPAGE, subset="genmedgpt")
    hub_id = HEALTHCAREMAGIC_HUB if subset == "healthcaremagic" else ICLINIQ_HUB
    return hub_rows("chatdoctor", hub_id, homepage=HOMEPAGE)


def load_chatdoctor(path: Path | None = None, subset: str | None = None) -> Iterator[Row]:
    """Rows of ChatDoctor: ``path`` if given, else ``subset`` (default: genmedgpt + healthcaremagic)."""
    if path is not None:
        yield from _mapped(read_rows(path))
        return
    for name in (subset,) if subset else TRAINING_SUBSETS:
        yield from _mapped(_fetch(name))


CHATDOCTOR = DatasetSpec(
    name="chatdoctor",
    description="ChatDoctor patient-doctor dialogues: HealthCareMagic-100k, iCliniq-10k, GenMedGPT-5k.",
    load=load_chatdoctor,
    languages=("en", "vi"),
    subsets=SUBSETS,
    license="Apache-2.0 (Kent0n-Li/ChatDoctor); README: academic research only, no commercial or clinical use",
    citation=CITATION,
    source=f"{GENMEDGPT_URL} ; hf:{HEALTHCAREMAGIC_HUB} ; hf:{ICLINIQ_HUB}",
    homepage=HOMEPAGE,
    domain="medical",
)


@hookimpl
def register_datasets(register):
    register(CHATDOCTOR)
