"""Code broken by translation: the detector's rules, its measured precision/recall on the labelled
Vietnamese Alpaca sample, the stats column, what `data prepare` drops, and `translate --repair`."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from translate_servers import FakeServer, word_substitute
from vichat.cli import main
from vichat.data.loading import load
from vichat.data.mixtures import screen_records
from vichat.data.quality import RULES, code_problems, record_code_problems
from vichat.data.quality_eval import evaluate, line_hash
from vichat.data.stats import compute_stats, format_stats
from vichat.records import Record, VichatError
from vichat.translate.matching import ContentIndex, check_order, Match
from vichat.translate.repair import repair_file, unmatched_path_for

from conftest import REPO

from vichat.plugins import get_registry  # noqa: E402

GOOGLE = get_registry().translator("google")

LABELS = REPO / "bench" / "vi_alpaca_code_labels.jsonl"
HELD_OUT = REPO / "bench" / "vi_alpaca_code_labels_heldout.jsonl"

# Written for these tests: what the careless translation did to small programs.
BROKEN = {
    "py-for": "cho x trong phạm vi (1, 4):\n    in (x)",
    "py-print": "ten = 'An'\nin (\"Xin chào\", ten)",
    "py-else": "nếu x > 3:\n    y = 1\nkhác:\n    y = 2",
    "py-if": "Nếu diem >= 5:\n    ket_qua = 'đỗ'",
    "py-import": "nhập khẩu numpy dưới dạng np\nx = np.zeros (3)",
    "py-block": "định nghĩa cong (a, b):\n    return a + b",
    "py-comprehension": "binh_phuong = [x ** 2 cho x trong so]",
    "js-function": "hàm tong (a, b) {\n  return a + b;\n}",
    "js-else": "if (a > b) {\n  m = a;\n} khác {\n  m = b;\n}",
    "js-let": "Đặt dem = 0;\ndem += 1;",
    "py-return": "function f(a) {\n  trả lại a * 2;\n}",
    "c-statement": "int tong = a + b;\nSystem.out.println (tong);\nint [] mảng = {1, 2, 3};",
    "css-property": ".tieu-de {\n    kích thước phông chữ: 20px;\n}",
    "html-tag": "<Bảng>\n  <tr><td>1</td></tr>\n</Bảng>",
    "sql": "Chọn ten, tuoi từ nhan_vien trong đó tuoi > 30;",
    "assignment": "danh sách = [3, 1, 2]\ndanh_sach.sort()",
}

# Prose and legitimate code that look like the rules' targets.
CLEAN = [
    "Việt Nam nhập khẩu nhiều máy móc và xuất khẩu gạo.",
    "Nếu bạn muốn học lập trình, hãy làm như sau:\n1. Chọn một ngôn ngữ.\n2. Luyện tập mỗi ngày.",
    "Đối với mỗi bước trong quy trình:\n- Ghi lại kết quả\n- Kiểm tra lại",
    "Chọn từ đúng để điền vào chỗ trống.",
    "Diện tích = chiều dài × chiều rộng = 5 × 3 = 15 cm².",
    "Khoảng cách = sqrt ((x2 - x1)^2 + (y2 - y1)^2)",
    'print("Xin chào, thế giới!")  # in lời chào\nfor i in range(3):\n    print(i)',
    '{\n  "Tên": "An",\n  "Tuổi": 20\n}',
    "Trả lại hàng được chấp nhận trong vòng 30 ngày.",
    "Ma trận A = [[1, 2], [3, 4]]",
    "console.log('Chào bạn');\nlet tong = 0;",
]


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_finds_its_corruption_and_says_where(rule):
    hits = code_problems(BROKEN[rule])
    assert rule in RULES
    assert rule in {h.rule for h in hits}, hits
    hit = next(h for h in hits if h.rule == rule)
    line = BROKEN[rule].splitlines()[hit.line - 1]
    assert hit.text == line.strip() and hit.field == "output"
    assert hit.describe().startswith(f"{rule} at output line {hit.line}: ")


@pytest.mark.parametrize("text", CLEAN)
def test_prose_and_good_code_are_not_flagged(text):
    assert code_problems(text) == []


def test_record_fields_pseudocode_and_prompt_lead_in():
    rec = Record("r1", "Sửa đoạn mã sau: cho i trong phạm vi (3):\n    in (i)", "Đã sửa.")
    hits = record_code_problems(rec)
    assert {h.field for h in hits} == {"instruction"} and hits[0].line == 1
    # A request for pseudocode may be answered in Vietnamese.
    pseudo = {"instruction": "Viết mã giả để tìm số lớn nhất.", "output": "Nếu x > lớn_nhất:\n    lớn_nhất = x"}
    assert record_code_problems(pseudo) == []
    # The prose lead-in of a joined prompt is not code ("... ngắn hơn: for (...) {").
    ok = {"instruction": "Viết lại đoạn mã sau cho ngắn hơn: for (i = 0; i < 3; i++) {", "output": "for (;;) {}"}
    assert record_code_problems(ok) == []


def test_python_that_no_longer_parses_is_found_with_the_english_reference():
    english = "for item in items:\n    total = total + item\nprint(total)"
    broken = "for item in items:\n    Tổng cộng = total + item\nprint(total)"  # no keyword translated
    assert [h.rule for h in code_problems(broken, reference=english)] == ["py-syntax"]
    assert code_problems(english.replace("items", "các_mục"), reference=english) == []  # parses: fine


def _shared_alpaca(shared_data):
    path = shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.mark.parametrize("labels", [LABELS, HELD_OUT], ids=["development", "held-out"])
def test_precision_and_recall_on_the_labelled_sample(shared_data, labels):
    result = evaluate(labels, _shared_alpaca(shared_data))
    positives = result.true_positive + result.false_negative
    assert positives >= 40 and result.scored - positives >= 30
    assert result.precision >= 0.95, "\n".join(result.lines())
    assert result.recall >= 0.90, "\n".join(result.lines())


def test_the_labelled_sample_is_large_and_refers_to_the_data_by_hash(shared_data, tmp_path):
    entries = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    assert len(entries) >= 150 and all(set(e) == {"line", "sha256", "label", "note"} for e in entries)
    assert {"corrupted", "clean"} <= {e["label"] for e in entries}
    data = _shared_alpaca(shared_data)
    first = entries[0]["line"]
    lines = data.read_text(encoding="utf-8").splitlines(keepends=True)
    assert line_hash(lines[first - 1]) == entries[0]["sha256"]
    changed = tmp_path / "changed.jsonl"
    lines[first - 1] = lines[first - 1].replace("a", "b", 1)
    changed.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(VichatError, match=f":{first}: the line differs"):
        evaluate(LABELS, changed)


class _Words:
    eos_token_id = 0
    name_or_path = "words"

    def __call__(self, texts, add_special_tokens=False, split_special_tokens=True):
        return {"input_ids": [[1] * len(t.split()) for t in texts]}


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [
    {"prompt": "Viết vòng lặp in các số từ 1 đến 3 bằng Python.", "response": BROKEN["py-for"]},
    {"prompt": "Thủ đô của Pháp là gì?", "response": "Thủ đô của Pháp là Paris."},
    {"prompt": "Viết truy vấn SQL lấy tên nhân viên trên 30 tuổi.", "response": BROKEN["sql"]},
    {"prompt": "Kể tên ba loại trái cây.", "response": "Táo, cam và chuối."},
    {"prompt": "Translate to English: xin chào", "response": "The answer is hello, and that is all there is to it."},
]


def test_stats_report_broken_code_next_to_untranslated(tmp_path):
    result = load(str(_write(tmp_path / "d.jsonl", ROWS)))
    stats = compute_stats(result, _Words())
    assert (stats.corrupted_code, stats.corrupted_code_share) == (2, 0.4)
    assert stats.untranslated == 1
    assert stats.corrupted_code_first[0].startswith("d-0 py-for at output line 1: ")
    text = format_stats(stats)
    assert "code broken by translation   2 (40.0%)" in text and "d-2 sql at output line 1" in text


def test_prepare_drops_broken_code_and_lists_it(tmp_path):
    data = _write(tmp_path / "d.jsonl", ROWS)
    runner = CliRunner()
    out = tmp_path / "o"
    result = runner.invoke(main, ["data", "prepare", "--dataset", str(data), "--out", str(out), "--val-size", "0"])
    assert result.exit_code == 0, result.output
    assert "2 dropped for code broken by translation" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["dropped_corrupted_code"] == 2 and manifest["counts"]["records"] == 3
    assert manifest["screen"]["corrupted_code"]["dropped"] == 2
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["id"] for s in skipped] == ["d-0", "d-2"]
    assert all(s["kind"] == "corrupted_code" for s in skipped) and "py-for at output line 1" in skipped[0]["problem"]
    train = (out / "train.jsonl").read_text(encoding="utf-8")
    assert "phạm vi" not in train and "Paris" in train

    kept = runner.invoke(main, ["data", "prepare", "--dataset", str(data), "--out", str(tmp_path / "k"),
                                "--val-size", "0", "--keep-corrupted-code", "--drop-untranslated", "--json"])
    assert kept.exit_code == 0, kept.output
    manifest = json.loads(kept.stdout)
    assert manifest["counts"]["kept_corrupted_code"] == 2 and manifest["counts"]["dropped_untranslated"] == 1
    assert manifest["counts"]["records"] == 4
    skipped = [json.loads(x) for x in (tmp_path / "k" / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(s["id"], s["kind"]) for s in skipped] == [("d-4", "untranslated")]


def test_the_screen_leaves_english_records_alone():
    english = Record("e", "What does this print?", "for x in y:\n    print(x)", language="en")
    kept, screened = screen_records([english], drop_untranslated=True)
    assert kept == [english] and screened == []


# ----------------------------------------------------------------------------- repair

EN = [
    {"instruction": "Write a loop that prints the numbers 1 to 3 in Python.", "input": "",
     "output": "for x in range(1, 4):\n    print(x)"},
    {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Fix the code so it prints 'big' or 'small'.", "input": "if n > 10:\n    print('big')\nelse:\n    print('small')",
     "output": "if n > 10:\n    print('big')\nelse:\n    print('small')"},
    {"instruction": "Write a SQL query for the names of employees older than 30.", "input": "",
     "output": "SELECT name FROM employees WHERE age > 30;"},
]
VI = [
    {"prompt": "Viết vòng lặp in các số 1 đến 3 bằng Python.", "response": "cho x trong phạm vi (1, 4):\n    in (x)"},
    {"prompt": "Thủ đô của Pháp là gì?", "response": "Thủ đô của Pháp là Paris."},
    {"prompt": "Sửa mã để in 'big' hoặc 'small'.: nếu n > 10:\n    in ('big')\nkhác:\n    in ('small')",
     "response": "nếu n > 10:\n    in ('big')\nkhác:\n    in ('small')"},
    {"prompt": "Viết truy vấn SQL cho tên nhân viên trên 30 tuổi.", "response": "Chọn name từ employees trong đó age > 30;"},
    {"prompt": "Viết hàm JavaScript cộng hai số.", "response": "hàm cong (a, b) {\n  trả lại a + b;\n}"},  # no original
]


@pytest.fixture
def google(monkeypatch, tmp_path):
    with FakeServer() as server:
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
        monkeypatch.setenv("VICHAT_GOOGLE_TRANSLATE_URL", server.google_url)
        yield server


def _repair_args(tmp_path, *extra):
    return ["translate", "--repair", str(tmp_path / "broken.jsonl"), str(tmp_path / "fixed.jsonl"),
            "--source-records", str(tmp_path / "en.json"), "-t", "google", "--backoff-base", "0.001",
            "--cache", str(tmp_path / "cache.sqlite"), *extra]


def test_repair_retranslates_only_broken_records_and_code_survives(google, tmp_path):
    _write(tmp_path / "broken.jsonl", VI)
    (tmp_path / "en.json").write_text(json.dumps(EN), encoding="utf-8")
    dry = CliRunner().invoke(main, _repair_args(tmp_path, "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert "repair: 4 records with broken code, 3 matched by content, 1 unmatched" in dry.stdout
    assert google.requests == 0 and not (tmp_path / "fixed.jsonl").exists()
    result = CliRunner().invoke(main, _repair_args(tmp_path))
    assert result.exit_code == 0, result.output
    assert "4 records with broken code, 3 re-translated" in result.stdout and "1 unmatched" in result.stdout
    fixed = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(fixed) == len(VI) and fixed[1] == VI[1] and fixed[4] == VI[4]  # order kept, others untouched
    # The server rewrites print/else/for/in wherever it sees them: code came back as in English.
    assert fixed[0]["response"] == EN[0]["output"]
    assert fixed[2]["response"] == EN[2]["output"]
    assert fixed[2]["prompt"] == word_substitute("VI: " + EN[2]["instruction"]) + ": " + EN[2]["input"]
    assert fixed[3]["response"] == EN[3]["output"]
    assert all(record_code_problems({"instruction": r["prompt"], "output": r["response"]}) == [] for r in fixed[:4])
    sent = [t for s in google.seen for t in s.texts]
    assert sent and not any("print(" in t or "SELECT" in t for t in sent)
    assert all(EN[1]["output"] not in t for t in sent)  # a clean record is never sent
    unmatched = [json.loads(x) for x in unmatched_path_for(tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(unmatched) == 1 and unmatched[0]["location"].endswith("broken.jsonl:5")
    assert "content score" in unmatched[0]["reason"] or "no number" in unmatched[0]["reason"]


def test_repair_resumes_from_the_cache_after_a_failed_run(google, tmp_path):
    _write(tmp_path / "broken.jsonl", VI[:4])
    (tmp_path / "en.json").write_text(json.dumps(EN), encoding="utf-8")
    google.push(("status", 500), ("status", 500))  # the first batch fails, twice: its records are not repaired
    first = CliRunner().invoke(main, _repair_args(tmp_path, "--retries", "1", "--batch-size", "2", "-j", "1"))
    assert first.exit_code == 1, first.output
    assert "failed records:" in first.stdout
    fixed = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    failed = [json.loads(x) for x in (tmp_path / "fixed.failed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(fixed) == 4 and fixed[0] == VI[0] and len(failed) >= 1  # written back unchanged, listed
    paid = {t for s in google.seen[2:] for t in s.texts}
    before = len(google.seen)
    second = CliRunner().invoke(main, _repair_args(tmp_path, "--batch-size", "2", "-j", "1"))
    assert second.exit_code == 0, second.output
    resent = {t for s in google.seen[before:] for t in s.texts}
    assert resent and not resent & paid  # what finished before came from the cache
    assert not (tmp_path / "fixed.failed.jsonl").exists()
    fixed = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert fixed[0]["response"] == EN[0]["output"]


def test_repair_by_id_keeps_ids_and_other_fields(google, tmp_path):
    broken = [{"id": "b", "instruction": "Viết vòng lặp.", "input": "", "output": VI[0]["response"], "source": "x"},
              {"id": "a", "instruction": "Thủ đô?", "input": "", "output": "Paris.", "source": "x"}]
    english = [{"id": "a", **EN[1]}, {"id": "b", **EN[0]}]
    _write(tmp_path / "broken.jsonl", broken)
    _write(tmp_path / "en.jsonl", english)
    summary = repair_file(tmp_path / "broken.jsonl", tmp_path / "fixed.jsonl", tmp_path / "en.jsonl", GOOGLE, cache=False)
    assert summary.match == "id" and summary.repaired == 1
    fixed = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in fixed] == ["b", "a"] and fixed[0]["source"] == "x"
    assert fixed[0]["output"] == EN[0]["output"] and fixed[1] == broken[1]
    with pytest.raises(VichatError, match="OUTPUT must differ"):
        repair_file(tmp_path / "broken.jsonl", tmp_path / "broken.jsonl", tmp_path / "en.jsonl", GOOGLE, cache=False)


def test_repair_usage_errors():
    runner = CliRunner()
    result = runner.invoke(main, ["translate", "--repair", __file__, "out.jsonl", "-t", "identity"])
    assert result.exit_code == 2 and "--source-records" in result.output


def test_content_matching_prefers_position_and_rejects_out_of_order():
    index = ContentIndex(["print(1) foo_bar 42", "print(1) foo_bar 42", "SELECT name FROM t_users"])
    assert index.match("in (1) foo_bar 42", 1).source == 1  # equal content: the nearer one
    assert index.match("Chọn name từ t_users", 2).source == 2
    assert index.match("xin chào các bạn", 0).source is None
    confident = {p: Match(p + 10, 1.0) for p in range(0, 50, 10)}
    checked = check_order({**confident, 25: Match(400, 0.7)})
    assert checked[25].source is None and "out of order" in checked[25].reason and checked[20].source == 30


def test_repair_of_the_real_file_against_the_english_reference(google, shared_data, tmp_path):
    vi = _shared_alpaca(shared_data)
    en = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    broken = tmp_path / "first2000.jsonl"
    with open(vi, encoding="utf-8") as src, open(broken, "w", encoding="utf-8") as dst:
        for _, line in zip(range(2000), src):
            dst.write(line)
    summary = repair_file(broken, tmp_path / "fixed.jsonl", en, GOOGLE, cache=False)
    assert summary.match == "content" and summary.flagged >= 10
    assert summary.repaired == summary.flagged and summary.unmatched == 0 and summary.still_flagged == 0
    before = broken.read_text(encoding="utf-8").splitlines()
    after = (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(after) == 2000 and sum(a != b for a, b in zip(before, after)) == summary.repaired
    loop = json.loads(after[1456])
    assert "for i in range(1,11):" in loop["response"] and "print(i)" in loop["response"]
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_repair_ctrl_c_then_resume_pays_nothing_twice(google, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    def word(i: int) -> str:  # distinct words, not digits: numbers are protected and never sent
        return "".join("klmnoprstu"[int(d)] for d in str(i)) + "ish"

    n = 24
    broken = [{"prompt": f"Viết vòng lặp {word(i)}.", "response": f"cho x trong phạm vi (1, {i + 2}):\n    in (x)"}
              for i in range(n)]
    english = [{"instruction": f"Write the {word(i)} loop.", "input": "", "output": f"for x in range(1, {i + 2}):\n    print(x)"}
               for i in range(n)]
    _write(tmp_path / "broken.jsonl", broken)
    (tmp_path / "en.json").write_text(json.dumps(english), encoding="utf-8")
    cmd = [sys.executable, "-m", "vichat.cli", *_repair_args(tmp_path, "--match", "index", "--batch-size", "2", "-j", "2")]
    google.delay = 0.05
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    deadline = time.monotonic() + 30
    while google.requests < 4:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the server saw too few requests"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command to resume" in err and "Traceback" not in err
    assert not (tmp_path / "fixed.jsonl").exists()
    first = {t for s in google.seen for t in s.texts}
    google.delay = 0.0
    before = len(google.seen)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second = {t for s in google.seen[before:] for t in s.texts}
    assert second and len(first | second) == n  # one instruction segment per record; code is never sent
    assert not first & second  # batches in flight at Ctrl-C landed in the cache: nothing is paid twice
    assert f"{n} re-translated" in done.stdout
    fixed = [json.loads(x) for x in (tmp_path / "fixed.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["response"] for r in fixed] == [e["output"] for e in english]
