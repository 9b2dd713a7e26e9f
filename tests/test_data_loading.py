"""Loading: real public files, every generic format, invalid records, duplicates, NFC, ids."""

from __future__ import annotations

import csv
import json
import unicodedata
from pathlib import Path

import pytest

from vichat.data import loading
from vichat.data.loading import MAX_EXAMPLES, load_items, looks_like_path
from vichat.plugins import get_registry
from vichat.records import InvalidRecordError, VichatError, is_nfc
from vichat.specs import Row


def load(ref, **kw):
    """The loader with the plugin registry, as the CLI calls it (names are looked up there)."""
    return loading.load(ref, **{"registry": get_registry(), **kw})


ROWS = [
    {"instruction": "Thủ đô của Việt Nam là gì?", "input": "", "output": "Hà Nội."},
    {"instruction": "Dịch sang tiếng Anh.", "input": "Xin chào", "output": "Hello"},
    {"instruction": "  Kể tên ba loại trái cây.  ", "output": "Xoài, chuối, cam.\n"},
]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _texts(result) -> list[tuple[str, str, str]]:
    return [(r.instruction, r.input, r.output) for r in result.records]


EXPECTED = [
    ("Thủ đô của Việt Nam là gì?", "", "Hà Nội."),
    ("Dịch sang tiếng Anh.", "Xin chào", "Hello"),
    ("Kể tên ba loại trái cây.", "", "Xoài, chuối, cam."),
]


# --------------------------------------------------------------------------- real public files


@pytest.mark.slow
def test_vi_alpaca_full_file_is_nfc_and_complete(shared_data):
    path = shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"
    result = load("vi-alpaca", path=path)
    assert result.read == result.kept == 51_052
    assert result.skipped_invalid == 0 and result.duplicates_removed == 0
    assert result.non_nfc == 75  # the MANIFEST's count of decomposed records
    assert result.language == "vi"
    assert all(is_nfc(r.instruction) and is_nfc(r.input) and is_nfc(r.output) for r in result.records)
    assert result.records[0].id == "vi-alpaca-0" and result.records[-1].id == "vi-alpaca-51051"
    assert {r.source for r in result.records} == {"vi-alpaca"}


def test_vi_alpaca_nfd_record_comes_out_nfc(shared_data):
    path = shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"
    raw = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh):
            d = json.loads(line)
            if not (is_nfc(d["prompt"]) and is_nfc(d["response"])):
                raw.append((lineno, d))
            if len(raw) == 3:
                break
    assert raw, "the shared file is expected to hold decomposed records"
    result = load(str(path))  # the generic path loader (prompt/response aliases)
    for lineno, d in raw:
        rec = result.records[lineno]  # no duplicates or invalid records: indices line up
        assert rec.instruction == unicodedata.normalize("NFC", d["prompt"]).strip()
        assert rec.output == unicodedata.normalize("NFC", d["response"]).strip()
        assert is_nfc(rec.instruction) and is_nfc(rec.output)
        assert rec.instruction != d["prompt"] or rec.output != d["response"]


def test_alpaca_en_empty_outputs_stop_the_load_and_name_the_flag(shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    with pytest.raises(InvalidRecordError) as err:
        load("alpaca", path=path)
    assert err.value.location == f"{path}:1422 (item 284)"
    assert "empty 'output'" in str(err.value)
    assert "--skip-invalid" in str(err.value)


def test_alpaca_en_skip_invalid_reports_all_four(shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    result = load("alpaca", path=path, skip_invalid=True)
    assert (result.read, result.kept, result.skipped_invalid) == (2000, 1996, 4)
    assert dict(result.skipped.reasons) == {"empty 'output'": 4}
    assert result.skipped.examples[0] == f"{path}:1422 (item 284): empty 'output'"
    assert result.language == "en"  # detected: the alpaca spec has two languages
    assert "skipped 4 invalid records" in result.summary()
    # ids stay those of the original positions, also after skipped records
    assert result.records[284].id == "alpaca-285"


def test_alpaca_subset_forces_language(shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    result = load("alpaca:vi", path=path, skip_invalid=True)
    assert {r.language for r in result.records} == {"vi"}


def test_chatdoctor_genmedgpt_maps_patient_question_to_instruction(shared_data):
    path = shared_data / "medical" / "chatdoctor_genmedgpt5k_en.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    result = load("chatdoctor", path=path, subset="genmedgpt")
    assert result.read == 5452
    # the 6 duplicated inputs of the MANIFEST have different outputs, so no record is a duplicate
    assert result.kept + result.duplicates_removed == 5452
    first = result.records[0]
    assert first.instruction == raw[0]["input"].strip()
    assert first.input == ""
    assert first.output == raw[0]["output"].strip()
    assert not any(r.instruction.startswith("If you are a doctor") for r in result.records)
    assert first.source == "chatdoctor:genmedgpt" and first.language == "en"


# --------------------------------------------------------------------------- generic formats


def test_jsonl(tmp_path):
    result = load(str(_write_jsonl(tmp_path / "d.jsonl", ROWS)))
    assert _texts(result) == EXPECTED
    assert [r.id for r in result.records] == ["d-0", "d-1", "d-2"]
    assert result.language == "vi" and result.source == "d"


def test_json_array_and_wrapper(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "w.json").write_text(json.dumps({"data": ROWS}, ensure_ascii=False), encoding="utf-8")
    assert _texts(load(str(tmp_path / "a.json"))) == EXPECTED
    assert _texts(load(str(tmp_path / "w.json"))) == EXPECTED


def test_json_and_jsonl_with_a_byte_order_mark(tmp_path):
    # Windows editors and Excel exports start UTF-8 files with a BOM; CSV already accepted it.
    from vichat.data.readers import read_rows

    bom = "\ufeff"
    files = {
        "b.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS),
        "a.json": json.dumps(ROWS, ensure_ascii=False, indent=1),
        "w.json": json.dumps({"data": ROWS}, ensure_ascii=False),
        "l.json": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS),  # JSON Lines named .json
    }
    for name, text in files.items():
        (tmp_path / name).write_text(bom + text, encoding="utf-8")
        assert _texts(load(str(tmp_path / name))) == EXPECTED, name
        rows = list(read_rows(tmp_path / name))
        assert [r.data for r in rows] == ROWS and all(bom not in k for r in rows for k in r.data), name
    assert [r.location for r in read_rows(tmp_path / "b.jsonl")][0].endswith("b.jsonl:1")
    assert [r.location for r in read_rows(tmp_path / "a.json")][0].endswith("a.json:2 (item 0)")


def test_csv(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        for r in ROWS:
            writer.writerow({"input": "", **r})
    assert _texts(load(str(path))) == EXPECTED


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": r["instruction"], "input": r.get("input"), "response": r["output"]} for r in ROWS]
    rows[2]["input"] = None  # a null input is an empty input
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert _texts(load(str(tmp_path / "d.parquet"))) == EXPECTED


def test_save_to_disk_folder(tmp_path):
    from datasets import Dataset

    rows = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"], "id": f"x{i}"}
            for i, r in enumerate(ROWS)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    result = load(str(tmp_path / "saved"))
    assert _texts(result) == EXPECTED
    assert [r.id for r in result.records] == ["x0", "x1", "x2"]  # a file's own ids are kept


def test_folder_of_files_through_a_plugin(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    _write_jsonl(folder / "p1.jsonl", [{"prompt": "Câu hỏi một?", "response": "Trả lời một."}])
    _write_jsonl(folder / "p2.jsonl", [{"prompt": "Câu hỏi hai?", "response": "Trả lời hai."}])
    result = load("vi-alpaca", path=folder)
    assert [r.instruction for r in result.records] == ["Câu hỏi một?", "Câu hỏi hai?"]


# --------------------------------------------------------------------------- invalid input


BAD = [
    {"instruction": "Câu hợp lệ.", "output": "Được."},
    {"instruction": "Thiếu đầu ra."},
    "not json",
    {"instruction": "Đầu ra rỗng.", "output": "   "},
    {"instruction": 5, "output": "Số."},
    {"prompt": "Câu hợp lệ hai.", "response": "Được."},
]


def _write_bad(path: Path) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in BAD]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_invalid_record_stops_with_file_and_line(tmp_path):
    path = _write_bad(tmp_path / "bad.jsonl")
    with pytest.raises(InvalidRecordError) as err:
        load(str(path))
    assert err.value.location == f"{path}:2"
    assert str(err.value).startswith(f"{path}:2: missing 'output'")
    assert "--skip-invalid" in str(err.value)


def test_unreadable_line_stops_with_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n', encoding="utf-8")
    with pytest.raises(InvalidRecordError, match=rf"{path}:2: unreadable row: invalid JSON"):
        load(str(path))


def test_skip_invalid_reports_every_skipped_record(tmp_path):
    path = _write_bad(tmp_path / "bad.jsonl")
    result = load(str(path), skip_invalid=True)
    assert (result.read, result.kept, result.skipped_invalid) == (6, 2, 4)
    assert sum(result.skipped.reasons.values()) == 4
    assert result.skipped.reasons["empty 'output'"] == 1
    assert result.skipped.reasons["'instruction' is int, expected text"] == 1
    assert any(k.startswith("unreadable row: invalid JSON") for k in result.skipped.reasons)
    assert [e.split(": ")[0] for e in result.skipped.examples] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert result.counts() == {"read": 6, "kept": 2, "skipped_invalid": 4, "duplicates_removed": 0, "non_nfc": 0}
    assert [r.id for r in result.records] == ["bad-0", "bad-5"]


def test_skip_report_keeps_the_first_locations_only(tmp_path):
    path = _write_jsonl(tmp_path / "many.jsonl", [{"instruction": f"q{i}"} for i in range(12)])
    result = load(str(path), skip_invalid=True)
    assert result.skipped.count == 12 and len(result.skipped.examples) == MAX_EXAMPLES
    assert result.skipped.to_dict()["reasons"] == {"missing 'output' (looked for 'output', 'response')": 12}


# --------------------------------------------------------------------------- duplicates, NFC, ids


def test_exact_duplicates_after_normalisation_are_removed_and_counted(tmp_path):
    nfd = unicodedata.normalize("NFD", "Thủ đô của Việt Nam là gì?")
    rows = ROWS + [
        {"instruction": nfd, "output": " Hà Nội. "},  # same as row 0 once NFC + stripped
        {"instruction": "Thủ đô của Việt Nam là gì?", "input": "", "output": "Hà Nội!"},  # differs
        dict(ROWS[1]),
    ]
    result = load(str(_write_jsonl(tmp_path / "dup.jsonl", rows)))
    assert result.read == 6 and result.kept == 4 and result.duplicates_removed == 2
    assert result.non_nfc == 1
    assert [r.id for r in result.records] == ["dup-0", "dup-1", "dup-2", "dup-4"]
    assert load(str(tmp_path / "dup.jsonl"), dedupe=False).kept == 6


def test_nfc_on_every_field_including_input(tmp_path):
    row = {k: unicodedata.normalize("NFD", v) for k, v in
           {"instruction": "Giải thích.", "input": "Trường hợp đặc biệt", "output": "Được rồi."}.items()}
    result = load(str(_write_jsonl(tmp_path / "nfd.jsonl", [row])))
    rec = result.records[0]
    assert (rec.instruction, rec.input, rec.output) == ("Giải thích.", "Trường hợp đặc biệt", "Được rồi.")
    assert result.non_nfc == 1


def test_load_items_accepts_records_and_rows():
    from vichat.records import Record

    items = [Row("mem:1", {"prompt": "Xin chào", "response": "Chào bạn"}),
             Record(id="r1", instruction=" Hỏi ", output=" Đáp ", language="vi")]
    result = load_items(items, name="mem", source="mem")
    assert [(r.id, r.instruction, r.output) for r in result.records] == [("mem-0", "Xin chào", "Chào bạn"), ("r1", "Hỏi", "Đáp")]


# --------------------------------------------------------------------------- references


def test_unknown_name_and_missing_path_and_bad_subset(tmp_path):
    with pytest.raises(VichatError, match="no dataset named 'alpacca'.*Did you mean 'alpaca'"):
        load("alpacca")
    with pytest.raises(VichatError, match="no such file or folder"):
        load(str(tmp_path / "missing.jsonl"))
    with pytest.raises(VichatError, match="no such file or folder"):
        load("vi-alpaca", path=tmp_path / "missing.jsonl")
    with pytest.raises(VichatError, match="has no subset 'xx'.*healthcaremagic, icliniq, genmedgpt"):
        load("chatdoctor:xx", path=tmp_path)
    assert looks_like_path("data/x") and looks_like_path("x.jsonl") and not looks_like_path("vi-alpaca")
