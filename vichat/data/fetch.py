"""Fetching public datasets for the built-in dataset plugins: plain URLs and Hugging Face hub ids.

Downloads are cached under ``$VICHAT_CACHE_DIR/datasets/<name>/`` (default ``~/.cache/vichat``), so a
second load reads the local copy and needs no network. Every failure (no network, offline mode, a
404, a timeout) becomes one :class:`~vichat.records.VichatError` that says where the data lives and
which flag takes a local copy instead: a load never hangs and never ends in a traceback.

Environment:
    VICHAT_CACHE_DIR                 where downloads are cached
    VICHAT_FETCH_TIMEOUT             seconds per network operation (default 15)
    VICHAT_DATASET_URL_<KEY>         comma-separated URLs replacing a dataset's built-in ones; KEY is
                                     the name (plus ``_<subset>``) upper-cased with ``-`` as ``_``,
                                     e.g. ``VICHAT_DATASET_URL_VI_ALPACA``, ``VICHAT_DATASET_URL_GPT4ALL_VI``
    HF_HUB_OFFLINE / HF_DATASETS_OFFLINE  honoured by ``datasets`` for hub ids
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..cache import cache_dir
from ..records import VichatError
from ..specs import Row
from .readers import read_rows

DEFAULT_TIMEOUT = 15.0


class FetchError(VichatError):
    """Public data could not be fetched; the message says where to get it and how to pass it."""


def timeout() -> float:
    """Seconds allowed per network operation (``$VICHAT_FETCH_TIMEOUT``)."""
    try:
        return float(os.environ.get("VICHAT_FETCH_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT


def url_env_var(name: str, subset: str | None = None) -> str:
    """The environment variable that overrides the URLs of ``name`` (and ``subset``)."""
    key = name if not subset else f"{name}_{subset}"
    return "VICHAT_DATASET_URL_" + re.sub(r"[^A-Z0-9]", "_", key.upper())


def offline_message(name: str, where: str, reason: str, homepage: str) -> str:
    """The user-facing text for a failed fetch: what failed, where to download, which flag to use."""
    return (
        f"cannot fetch dataset {name!r} from {where}: {reason}. "
        f"Without network, download the data from {homepage or where} and pass the local file or "
        f"folder with --path (`vichat data show|stats {name} --path FILE`) or with --source "
        f"(`vichat data prepare ... --source KEY=FILE`)"
    )


def fetch_urls(name: str, urls: Sequence[str], *, homepage: str = "", subset: str | None = None) -> list[Path]:
    """Download ``urls`` into the cache (once) and return the local files, in order.

    ``$VICHAT_DATASET_URL_<KEY>`` replaces ``urls`` (mirrors, tests). A partial download never
    stays in the cache: it is written to a temporary name and renamed when complete.
    """
    override = os.environ.get(url_env_var(name, subset))
    if override:
        urls = [u.strip() for u in override.split(",") if u.strip()]
    folder = cache_dir() / "datasets" / (name if not subset else f"{name}-{subset}")
    out: list[Path] = []
    for url in urls:
        filename = Path(urllib.parse.urlparse(url).path).name or "data.json"
        target = folder / filename
        if not target.exists():
            _download(name, url, target, homepage)
        out.append(target)
    return out


def _download(name: str, url: str, target: Path, homepage: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part-{os.getpid()}")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "vichat"})
        with urllib.request.urlopen(request, timeout=timeout()) as response, open(tmp, "wb") as fh:
            while chunk := response.read(1 << 20):
                fh.write(chunk)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
        raise FetchError(offline_message(name, url, reason, homepage)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def unreachable(url: str) -> str:
    """``""`` when a TCP connection to ``url``'s host opens within the timeout, else the reason."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=min(timeout(), 5.0)):
            return ""
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def url_rows(name: str, urls: Sequence[str], *, homepage: str = "", subset: str | None = None) -> Iterator[Row]:
    """Rows of the files at ``urls`` (downloaded and cached first)."""
    for file in fetch_urls(name, urls, homepage=homepage, subset=subset):
        yield from read_rows(file)


def hub_rows(
    name: str,
    hub_id: str,
    *,
    config: str | None = None,
    split: str | None = "train",
    homepage: str = "",
) -> Iterator[Row]:
    """Rows of a Hugging Face hub dataset, loaded with ``datasets.load_dataset`` (cached by it).

    ``datasets`` is imported here, not at plugin import, to keep ``vichat --help`` fast.
    """
    where = f"the Hugging Face hub ({hub_id})"
    # Short timeouts so an unreachable hub fails in seconds, not minutes; huggingface_hub reads
    # them when first imported, hence before the import.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout())))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout())))
    homepage = homepage or f"https://huggingface.co/datasets/{hub_id}"
    offline = any(os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not Path(hub_id).exists():  # a local folder needs no hub
        # huggingface_hub retries an unreachable hub with backoff for ~25 s; one quick connection
        # attempt tells the same thing at once. (Offline mode goes straight to the local cache.)
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        problem = unreachable(endpoint)
        if problem:
            reason = (
                f"{endpoint} is unreachable ({problem}); if the data is in your Hugging Face cache, "
                "set HF_DATASETS_OFFLINE=1 to use it"
            )
            raise FetchError(offline_message(name, where, reason, homepage))
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not reachable"
        first_line = (str(exc).splitlines() or [""])[0]
        raise FetchError(offline_message(name, where, f"{type(exc).__name__}: {first_line}", homepage)) from exc
    parts = ds.items() if isinstance(ds, dict) else [(split or "train", ds)]
    for part_name, part in parts:
        for i, item in enumerate(part):
            yield Row(f"hf:{hub_id}[{part_name}]:row {i + 1}", item)


def tag_rows(rows: Iterator[Row], **fields: Any) -> Iterator[Row]:
    """``rows`` with ``fields`` added to each readable row (e.g. ``language="en"``); row values win."""
    for row in rows:
        if isinstance(row.data, Mapping):
            yield Row(row.location, {**fields, **row.data})
        else:  # an Unreadable marker goes through untouched: loading reports it
            yield row
