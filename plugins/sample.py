"""The bundled Vietnamese sample: small datasets shipped inside the package (no network needed).

``vi-sample-chat`` (``vichat/data/sample/general.jsonl``) and ``vi-sample-doctor``
(``vichat/data/sample/medical.jsonl``) were written for the project, in NFC Vietnamese, with
``id``, ``instruction``, ``input``, ``output`` and ``category`` fields. They are what the tests, the
offline demo and the ``sample-chat`` / ``sample-doctor`` mixtures use.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator

from vichat.plugin import hookimpl, DatasetSpec, read_rows, Row, VichatError

PACKAGE = "vichat.data"
FILES = {"vi-sample-chat": "general.jsonl", "vi-sample-doctor": "medical.jsonl"}


def sample_file(name: str) -> resources.abc.Traversable:
    """The bundled file of sample dataset ``name`` (a package resource)."""
    return resources.files(PACKAGE).joinpath("sample", FILES[name])


def _loader(name: str):
    def load(path: Path | None = None, subset: str | None = None) -> Iterator[Row]:
        """Rows of the bundled sample (or of ``path`` when given)."""
        if path is not None:
            yield from read_rows(path)
            return
        resource = sample_file(name)
        if not resource.is_file():
            raise VichatError(f"the bundled sample {FILES[name]} is missing from package {PACKAGE}; reinstall vichat")
        # as_file gives a real path even when the package is zipped.
        with resources.as_file(resource) as file:
            yield from read_rows(file)

    load.__name__ = f"load_{name.replace('-', '_')}"
    return load


VI_SAMPLE_CHAT = DatasetSpec(
    name="vi-sample-chat",
    description="Bundled Vietnamese general-chat sample (written for vichat; offline default).",
    load=_loader("vi-sample-chat"),
    languages=("vi",),
    license="Apache-2.0 (part of vichat)",
    source="package:vichat.data/sample/general.jsonl",
    homepage="",
    domain="general",
)

VI_SAMPLE_DOCTOR = DatasetSpec(
    name="vi-sample-doctor",
    description="Bundled Vietnamese patient-question sample (written for vichat; offline default).",
    load=_loader("vi-sample-doctor"),
    languages=("vi",),
    license="Apache-2.0 (part of vichat)",
    source="package:vichat.data/sample/medical.jsonl",
    homepage="",
    domain="medical",
)


@hookimpl
def register_datasets(register):
    register(VI_SAMPLE_CHAT)
    register(VI_SAMPLE_DOCTOR)
