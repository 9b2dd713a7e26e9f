"""A real browser: Debian's Chromium, headless, driven by Playwright against the running app.

Screenshots go to test-artifacts/ (git-ignored). Skipped where Chromium or Playwright is missing;
never downloads a browser (no `playwright install`).
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from app_support import ScriptedBackend, running_app, test_settings, votes_in
from test_app_units import write_report

from vichat.app.fake import CannedBackend

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):  # CI installs it (`make browser`): its absence there is a failure
            pytest.fail("Debian's chromium is missing on CI: `make browser` should have installed it")
        pytest.skip("Debian's chromium is not installed (`make browser`, or apt-get install chromium)")
    tmp = tmp_path_factory.mktemp("browser")
    write_report(tmp / "reports" / "paper-table-iii")
    settings = test_settings(tmp, report_dirs=(tmp / "reports",))
    hits: list[str] = []
    outside = _image_server(hits)  # stands in for a site an answer would make readers' browsers fetch
    host = f"http://127.0.0.1:{outside.server_address[1]}"
    backend = ScriptedBackend(CannedBackend(delay_s=0.04), slow_s=0.5, payload=PAYLOAD.replace("OUTSIDE", host))
    with running_app(backend, settings, seed=1) as (demo, url):
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            pg = browser.new_page(viewport={"width": 1280, "height": 1000}, locale="vi-VN")
            pg.set_default_timeout(20_000)
            failed: list[str] = []  # API calls the page made that the server refused
            pg.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                  if "/gradio_api/" in r.url and r.status >= 400 else None)
            pg.vichat_failed = failed  # type: ignore[attr-defined]
            pg.goto(url, wait_until="domcontentloaded")  # never networkidle: Gradio keeps a stream open
            pg.wait_for_selector("#chat-input textarea")
            pg.vichat_hits = hits  # type: ignore[attr-defined]
            yield pg, settings
            browser.close()
    outside.shutdown()


#: A model answer that tries what a hostile answer would, next to what a good one uses.
PAYLOAD = """Đây là biểu mẫu: <form action="OUTSIDE/steal"><button id="evil-button">Bấm vào đây</button></form>
<img src="OUTSIDE/pixel.png"> ![ảnh](OUTSIDE/markdown.png)
<img src=x onerror="window.__pwned = 1"> <svg onload="window.__pwned = 2"></svg> <script>window.__pwned = 3</script>
<a href="javascript:window.__pwned=4">liên kết</a> <b>chữ đậm</b>

```html
<form><button>trong khối mã</button></form>
```

Công thức: $$E = mc^2 < 2x$$ xong."""


def _image_server(hits: list[str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_chat_streams_a_vietnamese_answer(page):
    pg, _ = page
    ARTIFACTS.mkdir(exist_ok=True)
    pg.fill("#chat-input textarea", "Hãy giới thiệu ngắn gọn về Vịnh Hạ Long.")
    pg.click("#chat-send")
    history = pg.locator("#chat-history")
    pg.wait_for_function("document.querySelector('#chat-history').innerText.includes('Xin chào!')")
    lengths = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        text = history.inner_text()
        lengths.append(len(text))
        if "khi chưa hiểu." in text:
            break
        time.sleep(0.1)
    assert "khi chưa hiểu." in history.inner_text()
    assert "Vịnh Hạ Long" in history.inner_text()
    assert len(set(lengths)) >= 3, f"the answer should grow while streaming: {lengths}"
    pg.screenshot(path=str(ARTIFACTS / "app-chat.png"), full_page=True)


def test_battle_vote_reveals_the_names(page):
    pg, settings = page
    ARTIFACTS.mkdir(exist_ok=True)
    pg.get_by_role("tab", name="⚔️ Đấu trường").click()
    pg.fill("#battle-input textarea", "Kể tên ba món ăn nổi tiếng của Việt Nam. #chờ")
    pg.click("#battle-send")
    # Both sides wait in the (scripted) engine queue first: each shows its place, then its answer.
    pg.wait_for_function("['#battle-a', '#battle-b'].every(s => document.querySelector(s).innerText"
                         ".includes('Đang chờ đến lượt: vị trí'))")
    pg.wait_for_function("document.querySelector('#battle-status').innerText.includes('Câu trả lời nào tốt hơn')")
    assert "Mô hình A" in pg.locator("#battle-a").inner_text()
    assert "Đang chờ" not in pg.locator("#battle-a").inner_text() + pg.locator("#battle-b").inner_text()
    assert pg.locator("#battle-vote-a").is_enabled()
    pg.click("#battle-vote-a")
    pg.wait_for_function("document.querySelector('#battle-status').innerText.includes('Đã ghi nhận phiếu')")
    [row] = votes_in(settings.votes_db)
    status = pg.locator("#battle-status").inner_text()
    assert row["model_a"] in status and row["model_b"] in status and row["vote"] == "a"
    assert row["answer_a"] and row["answer_b"] and "Đang chờ" not in row["answer_a"] + row["answer_b"]
    pg.wait_for_function(f"document.querySelector('#battle-a').innerText.includes('A · {row['model_a']}')")
    assert not pg.locator("#battle-vote-b").is_enabled()  # one vote per battle
    pg.screenshot(path=str(ARTIFACTS / "app-arena.png"), full_page=True)
    pg.get_by_role("tab", name="🏆 Bảng xếp hạng").click()
    pg.wait_for_function(f"document.querySelector('#leaderboard-table').innerText.includes('{row['model_a']}')")
    pg.screenshot(path=str(ARTIFACTS / "app-leaderboard.png"), full_page=True)


def test_scoring_tab_shows_a_report(page):
    pg, _ = page
    pg.get_by_role("tab", name="🧑‍⚖️ Chấm điểm").click()
    pg.click("#report-show")
    pg.wait_for_function("document.querySelector('#report-table').innerText.includes('Common-Sense')")
    assert "GPTJ-Chat" in pg.locator("#report-table").inner_text()
    pg.locator("#report-chart").scroll_into_view_if_needed()
    pg.wait_for_timeout(1000)  # the chart draws after its data arrives
    pg.screenshot(path=str(ARTIFACTS / "app-scoring.png"), full_page=True)


def test_a_hostile_answer_renders_as_text_and_loads_nothing(page):
    pg, _ = page
    pg.get_by_role("tab", name="💬 Trò chuyện").click()
    pg.get_by_role("button", name="🗑 Xóa").click()
    pg.fill("#chat-input textarea", "Trả lời bằng HTML #html")
    pg.click("#chat-send")
    pg.wait_for_function("document.querySelector('#chat-history').innerText.includes('xong.')")
    pg.wait_for_timeout(1500)  # time for any image or script to load or run
    history = pg.locator("#chat-history")
    assert history.locator("form").count() == 0
    assert history.locator("button", has_text="Bấm vào đây").count() == 0
    assert "Bấm vào đây" in history.inner_text()  # shown as text: nothing the model wrote is lost
    assert pg.vichat_hits == [], pg.vichat_hits  # no outside image was fetched
    assert pg.evaluate("window.__pwned") is None  # no script ran
    assert history.locator("pre code", has_text="<form><button>trong khối mã</button></form>").count() == 1
    assert history.locator(".katex").count() >= 1  # math still rendered
    assert history.locator("strong, b", has_text="chữ đậm").count() == 1  # formatting kept
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "app-sanitised.png"), full_page=True)


def test_the_page_never_hit_a_refused_endpoint(page):
    """Private events, and the loading poll, must still work from the page (last test: it covers
    everything the tests above clicked)."""
    pg, _ = page
    pg.get_by_role("tab", name="🧑‍⚖️ Chấm điểm").click()
    pg.get_by_role("tab", name="🏆 Bảng xếp hạng").click()
    pg.wait_for_timeout(1000)
    assert pg.vichat_failed == [], pg.vichat_failed
