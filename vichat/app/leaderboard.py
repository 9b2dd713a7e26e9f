"""The Leaderboard tab: Bradley-Terry ratings with 95% bootstrap intervals, online Elo, counts,
and the votes as JSONL. Endpoints: ``leaderboard`` (include named votes -> table, summary) and
``export_votes`` (admin token -> a JSONL file).

The export holds every visitor's prompts and answers, so it exists only when the operator set an
admin token (``VICHAT_ADMIN_TOKEN``), and wrong tokens count against a per-address limit. Each
export file is deleted ``VICHAT_EXPORT_TTL`` seconds after it was written (time enough to download
it); Gradio's copy in its cache goes with the app's ``delete_cache`` setting."""

from __future__ import annotations

import hmac
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from ..records import VichatError
from .context import AppContext
from ..arena.ratings import Standing
from .safety import LimitError, describe_error, refuse

#: Wrong admin tokens tolerated per address (a guess costs a slot for an hour).
ADMIN_ATTEMPTS = (5, 3600.0)

COLUMNS = ["Hạng", "Mô hình", "Điểm BT", "KTC 95%", "Elo trực tuyến", "Số trận", "Thắng", "Thua", "Hòa",
           "Cả hai kém"]

METHOD = (
    "**Cách tính.** *Điểm BT*: mô hình Bradley-Terry (thang Elo: 400 điểm ứng với tỉ lệ thắng 10:1, trung bình "
    "các mô hình là 1000), hòa và “cả hai đều kém” tính là nửa trận thắng cho mỗi bên. *KTC 95%*: khoảng bootstrap "
    "(lấy mẫu lại các phiếu). *Hạng*: 1 + số mô hình có cả khoảng tin cậy nằm trên khoảng của mô hình này. "
    "*Elo trực tuyến*: Elo cổ điển cập nhật theo thứ tự phiếu. Chỉ tính phiếu ẩn danh, trừ khi chọn gộp cả phiếu "
    "có tên. Từ một địa chỉ mạng, mỗi câu hỏi chỉ tính một phiếu và mỗi ngày tính tối đa {cap} phiếu "
    "(chống dồn phiếu). Xem docs/app.md."
)


def _fmt(x: float) -> str:
    return f"{x:.0f}" if x == x and abs(x) != float("inf") else ("∞" if x > 0 else "−∞" if x < 0 else "n/a")


def standings_frame(rows: list[Standing]) -> pd.DataFrame:
    """The table shown in the page (one row per model, best first)."""
    data = [
        [r.rank, r.model, round(r.rating, 1), f"{_fmt(r.lower)} – {_fmt(r.upper)}", round(r.elo, 1), r.battles,
         r.wins, r.losses, r.ties, r.both_bad]
        for r in rows
    ]
    return pd.DataFrame(data, columns=COLUMNS)


class LeaderboardHandlers:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._export_dir: Path | None = None

    @property
    def export_allowed(self) -> bool:
        return bool(self.ctx.settings.export_enabled and self.ctx.settings.admin_token)

    def refresh(self, include_named: bool = False) -> tuple[pd.DataFrame, str]:
        """The standings and a one-line summary."""
        try:
            rows, n = self.ctx.board.standings(bool(include_named))
        except Exception as exc:  # noqa: BLE001 - a broken database must not take the page down
            raise gr.Error(f"Không đọc được bảng xếp hạng: {describe_error(exc)}") from None
        which = "ẩn danh và có tên" if include_named else "ẩn danh"
        summary = (f"**{n}** phiếu được tính ({which}), **{len(rows)}** mô hình; tổng số phiếu đã lưu: "
                   f"**{self.ctx.votes.count()}**. Cập nhật lúc {time.strftime('%H:%M:%S')}.")
        return standings_frame(rows), summary

    def export(self, admin_token: str = "", request: gr.Request = None) -> Any:
        """Write every vote to a fresh JSONL file and hand it to the download button (admin only)."""
        settings = self.ctx.settings
        if not self.export_allowed:
            raise refuse("Bản demo này không cho tải phiếu bầu (người vận hành chưa đặt VICHAT_ADMIN_TOKEN).",
                         "export_votes")
        try:
            if not hmac.compare_digest(str(admin_token or "").encode(), settings.admin_token.encode()):
                address = self.ctx.identities.address(request)
                count, window = ADMIN_ATTEMPTS
                if self.ctx.votes.take([("admin", "a:" + address, count, window)]):
                    raise LimitError("Sai mã quản trị quá nhiều lần; hãy thử lại sau một giờ.")
                raise LimitError("Sai mã quản trị: chỉ người vận hành mới tải được phiếu bầu.")
        except VichatError as exc:
            raise refuse(exc, "export_votes") from None
        directory = Path(tempfile.mkdtemp(prefix="vichat-votes-"))
        path = directory / f"vichat-votes-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        try:
            n = self.ctx.votes.export_jsonl(path)
        except Exception as exc:  # noqa: BLE001
            shutil.rmtree(directory, ignore_errors=True)
            raise gr.Error(f"Không xuất được phiếu bầu: {describe_error(exc)}") from None
        # Removed after the download window; a daemon timer, so it never holds the process up.
        timer = threading.Timer(settings.export_ttl_s, shutil.rmtree, args=(directory,), kwargs={"ignore_errors": True})
        timer.daemon = True
        timer.start()
        self._export_dir = directory
        return gr.update(value=str(path), visible=True, label=f"⬇️ Tải {n} phiếu (JSONL)")


def build_leaderboard_tab(ctx: AppContext, tab: Any) -> LeaderboardHandlers:
    """Lay out the tab; ``tab`` is its ``gr.Tab`` (selecting it refreshes the table)."""
    h = LeaderboardHandlers(ctx)
    gr.Markdown(METHOD.format(cap=ctx.settings.leaderboard_address_cap or "không giới hạn"))
    with gr.Row():
        include_named = gr.Checkbox(False, label="Gộp cả phiếu của chế độ có tên (side-by-side)")
        refresh = gr.Button("🔄 Làm mới", scale=0, elem_id="leaderboard-refresh")
    summary = gr.Markdown(elem_id="leaderboard-summary")
    table = gr.Dataframe(standings_frame([]), interactive=False, elem_id="leaderboard-table", wrap=True)
    if h.export_allowed:
        with gr.Accordion("Quản trị: tải phiếu bầu", open=False):
            with gr.Row():
                token = gr.Textbox(label="Mã quản trị", type="password", scale=2, elem_id="votes-admin-token")
                export = gr.Button("📦 Xuất phiếu bầu (JSONL)", scale=0, elem_id="votes-export")
                download = gr.DownloadButton("⬇️ Tải phiếu bầu", visible=False, scale=0, elem_id="votes-download")
        export.click(h.export, [token], download, api_name="export_votes", concurrency_limit=1,
                     concurrency_id="export")
    limit = dict(concurrency_limit=2, concurrency_id="leaderboard")
    refresh.click(h.refresh, [include_named], [table, summary], api_name="leaderboard", **limit)
    include_named.change(h.refresh, [include_named], [table, summary], api_visibility="private", **limit)
    tab.select(h.refresh, [include_named], [table, summary], api_visibility="private", **limit)
    return h
