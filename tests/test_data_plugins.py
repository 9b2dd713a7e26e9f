"""Built-in dataset plugins: specs, fetching (local HTTP server, local hub folder), offline errors."""

from __future__ import annotations

import http.server
import json
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from vichat.data import fetch, loading
from vichat.plugins import get_registry
from vichat.records import VichatError
from vichat_plugins import chatdoctor


def load(ref, **kw):
    """The loader with the plugin registry, as the CLI calls it (names are looked up there)."""
    return loading.load(ref, **{"registry": get_registry(), **kw})


BUILTIN = {"alpaca", "vi-alpaca", "gpt4all", "chatdoctor", "vi-sample-chat", "vi-sample-doctor"}


def test_builtin_datasets_are_registered_with_source_licence_and_citation():
    registry = get_registry()
    assert BUILTIN <= set(registry.names("datasets"))
    for name in BUILTIN:
        spec = registry.dataset(name)
        assert spec.source and spec.license, name
        if not name.startswith("vi-sample"):
            assert spec.homepage.startswith("https://") and spec.citation, name
    assert registry.dataset("gpt4all").source == "nomic-ai/gpt4all_prompt_generations"
    assert set(registry.dataset("chatdoctor").subsets) == {"healthcaremagic", "icliniq", "genmedgpt"}
    assert registry.dataset("chatdoctor").domain == "medical"


# --------------------------------------------------------------------------- offline failures


def _force_hub_offline(monkeypatch) -> None:
    # huggingface_hub and datasets read the offline variables when first imported; an earlier test
    # may have imported them already, so their module constants are switched too (and restored).
    import sys

    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(ds_config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: hub offline mode and every dataset URL pointed at a closed local port."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path / "cache"))
    _force_hub_offline(monkeypatch)
    closed = "http://127.0.0.1:9/data.jsonl"  # discard port: connection refused at once
    for name, subset in (("alpaca", None), ("vi-alpaca", None), ("gpt4all", "vi"), ("chatdoctor", "genmedgpt")):
        monkeypatch.setenv(fetch.url_env_var(name, subset), closed)


@pytest.mark.parametrize(
    "ref",
    ["alpaca", "alpaca:vi", "vi-alpaca", "gpt4all", "gpt4all:vi", "chatdoctor", "chatdoctor:icliniq",
     "chatdoctor:healthcaremagic"],
)
def test_offline_fetch_fails_fast_naming_the_flag_and_the_source(offline, ref):
    start = time.perf_counter()
    with pytest.raises(VichatError) as err:
        load(ref)
    assert time.perf_counter() - start < 15
    message = str(err.value)
    assert "cannot fetch dataset" in message
    assert "--path" in message and "--source" in message
    assert "download the data from https://" in message  # where to get it by hand


def test_unreachable_hub_fails_at_once_without_offline_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(VichatError, match="unreachable.*--path"):
        load("gpt4all")
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- fetching for real


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args, **kwargs) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_source_is_downloaded_cached_and_read(http_server, monkeypatch, tmp_path):
    root, base = http_server
    for i in (1, 2):
        (root / f"part_{i}.jsonl").write_text(
            json.dumps({"prompt": f"Câu hỏi {i}?", "response": f"Trả lời {i}."}, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VICHAT_DATASET_URL_VI_ALPACA", f"{base}/part_1.jsonl,{base}/part_2.jsonl")
    result = load("vi-alpaca")
    assert [r.instruction for r in result.records] == ["Câu hỏi 1?", "Câu hỏi 2?"]
    cached = sorted(p.name for p in (tmp_path / "cache" / "datasets" / "vi-alpaca").iterdir())
    assert cached == ["part_1.jsonl", "part_2.jsonl"]  # no partial downloads left behind
    for p in root.iterdir():
        p.unlink()  # the server no longer has the files: the cache answers
    assert load("vi-alpaca").kept == 2


def test_url_404_is_a_fetch_error(http_server, monkeypatch, tmp_path):
    _, base = http_server
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VICHAT_DATASET_URL_ALPACA", f"{base}/missing.json")
    with pytest.raises(VichatError, match="HTTP 404.*--path"):
        load("alpaca")
    assert not list((tmp_path / "cache" / "datasets" / "alpaca").iterdir())


def test_hub_rows_load_a_local_dataset_folder(tmp_path):
    # load_dataset is the real hub code path; a local folder stands in for the hub repository.
    folder = tmp_path / "hub-repo"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        json.dumps({"input": "Tôi bị đau đầu.", "answer_icliniq": "Hãy nghỉ ngơi.", "answer_chatgpt": "x"},
                   ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    rows = list(fetch.hub_rows("chatdoctor", str(folder)))
    assert rows[0].location.startswith(f"hf:{folder}[train]:row 1")
    mapped = chatdoctor.map_row(rows[0].data)
    assert (mapped["instruction"], mapped["output"]) == ("Tôi bị đau đầu.", "Hãy nghỉ ngơi.")


# --------------------------------------------------------------------------- ChatDoctor mapping


def test_chatdoctor_mapping_variants(tmp_path):
    rows = [
        {"instruction": "If you are a doctor, please answer the medical questions based on the patient's description.",
         "input": "Hi doctor, I have a cough.", "output": "Drink water."},
        {"instruction": "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân.",
         "input": "Tôi bị ho.", "output": "Uống nhiều nước."},
        {"input": "I have a rash.", "answer_icliniq": "Use a cream.", "answer_chatgpt": "...", "answer_chatdoctor": "..."},
        {"prompt": "Tôi bị sốt.", "response": "Nghỉ ngơi."},
        {"instruction": "Tóm tắt bệnh án.", "input": "Bệnh nhân nam, 40 tuổi.", "output": "Nam, 40."},
    ]
    path = tmp_path / "cd.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = load("chatdoctor", path=path)
    got = [(r.instruction, r.input, r.output) for r in result.records]
    assert got == [
        ("Hi doctor, I have a cough.", "", "Drink water."),
        ("Tôi bị ho.", "", "Uống nhiều nước."),
        ("I have a rash.", "", "Use a cream."),
        ("Tôi bị sốt.", "", "Nghỉ ngơi."),
        ("Tóm tắt bệnh án.", "Bệnh nhân nam, 40 tuổi.", "Nam, 40."),  # not a preamble: kept as is
    ]
    assert chatdoctor.is_preamble("  IF YOU ARE A DOCTOR, answer") and not chatdoctor.is_preamble(None)


# --------------------------------------------------------------------------- bundled sample


def test_bundled_samples_load_offline_and_are_clean():
    chat = load("vi-sample-chat")
    doctor = load("vi-sample-doctor")
    assert chat.kept >= 220 and doctor.kept >= 110
    for result in (chat, doctor):
        assert result.skipped_invalid == 0 and result.duplicates_removed == 0 and result.non_nfc == 0
        assert result.language == "vi"
        assert len({r.id for r in result.records}) == result.kept


def test_sample_loader_reads_a_given_path_instead(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"id": "a", "instruction": "Chào", "input": "", "output": "Xin chào", "category": "x"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    result = load("vi-sample-chat", path=path)
    assert [(r.id, r.source) for r in result.records] == [("a", "vi-sample-chat")]


def test_plugins_import_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, vichat_plugins.alpaca, vichat_plugins.gpt4all, vichat_plugins.chatdoctor, "
            "vichat_plugins.sample; heavy = {'datasets', 'torch', 'transformers', 'pyarrow'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_path_must_exist_for_url_override_files(tmp_path):
    assert fetch.url_env_var("gpt4all", "vi") == "VICHAT_DATASET_URL_GPT4ALL_VI"
    assert fetch.url_env_var("vi-alpaca") == "VICHAT_DATASET_URL_VI_ALPACA"
    assert isinstance(fetch.cache_dir(), Path)


def test_sample_loader_uses_the_package_resource(monkeypatch, tmp_path):
    import vichat_plugins.sample as sample

    fake = tmp_path / "general.jsonl"
    fake.write_text(json.dumps({"id": "g1", "instruction": "Chào", "input": "", "output": "Xin chào"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    monkeypatch.setattr(sample, "sample_file", lambda name: fake)
    assert [r.id for r in load("vi-sample-chat").records] == ["g1"]
    monkeypatch.setattr(sample, "sample_file", lambda name: tmp_path / "missing.jsonl")
    with pytest.raises(VichatError, match="missing from package vichat.data; reinstall"):
        load("vi-sample-doctor")
