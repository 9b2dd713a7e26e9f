"""The Leaderboard tab: Bradley-Terry ratings with 95% bootstrap intervals, online Elo, counts,
and the votes as JSONL. Endpoints: ``leaderboard`` (include named votes -> table, summary) and
``export_votes`` (-> a JSONL file)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .context import AppContext
from .ratings import Standing
from .safety import describe_error

COLUMNS = ["Hạng", "Mô hình", "Điểm BT", "KTC 95%", "Elo trực tuyến", "Số trận", "Thắng", "Thua", "Hòa",
           "Cả hai kém"]

METHOD = (
    "**Cách tính.** *Điểm BT*: mô hình Bradley-Terry (thang Elo: 400 điểm ứng với tỉ lệ thắng 10:1, trung bình "
    "các mô hình là 1000), hòa và “cả hai đều kém” tính là nửa trận thắng cho mỗi bên. *KTC 95%*: khoảng bootstrap "
    "(lấy mẫu lại các phiếu). *Hạng*: 1 + số mô hình có cả khoảng tin cậy nằm trên khoảng của mô hình này. "
    "*Elo trực tuyến*: Elo cổ điển cập nhật theo thứ tự phiếu. Chỉ tính phiếu ẩn danh, trừ khi chọn gộp cả phiếu "
    "có tên. Xem docs/app.md."
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
        self._export_dir = Path(tempfile.mkdtemp(prefix="vichat-votes-"))

    def refresh(self, include_named: bool = False) -> tuple[pd.DataFrame, str]:
        """The standings and a one-line summary."""
        try:
            rows, n = self.ctx.board.standings(bool(include_named))
        except Exception as exc:  # noqa: BLE001 - a broken database must not take the page down
            raise gr.Error(f"Không đọc được bảng xếp hạng: {describe_error(exc)}") from None
        which = "ẩn danh và có tên" if include_named else "ẩn danh"
        summary = (f"**{n}** phiếu ({which}), **{len(rows)}** mô hình; tổng số phiếu đã lưu: "
                   f"**{self.ctx.votes.count()}**. Cập nhật lúc {time.strftime('%H:%M:%S')}.")
        return standings_frame(rows), summary

    def export(self) -> Any:
        """Write every vote to a fresh JSONL file and hand it to the download button."""
        if not self.ctx.settings.export_enabled:
            raise gr.Error("Bản demo này đã tắt việc tải phiếu bầu (VICHAT_VOTES_EXPORT=0).")
        path = self._export_dir / f"vichat-votes-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        try:
            n = self.ctx.votes.export_jsonl(path)
        except Exception as exc:  # noqa: BLE001
            raise gr.Error(f"Không xuất được phiếu bầu: {describe_error(exc)}") from None
        gr.Info(f"Đã xuất {n} phiếu bầu.")
        return gr.update(value=str(path), visible=True, label=f"⬇️ Tải {n} phiếu (JSONL)")


def build_leaderboard_tab(ctx: AppContext, tab: Any) -> LeaderboardHandlers:
    """Lay out the tab; ``tab`` is its ``gr.Tab`` (selecting it refreshes the table)."""
    h = LeaderboardHandlers(ctx)
    gr.Markdown(METHOD)
    with gr.Row():
        include_named = gr.Checkbox(False, label="Gộp cả phiếu của chế độ có tên (side-by-side)")
        refresh = gr.Button("🔄 Làm mới", scale=0, elem_id="leaderboard-refresh")
    summary = gr.Markdown(elem_id="leaderboard-summary")
    table = gr.Dataframe(standings_frame([]), interactive=False, elem_id="leaderboard-table", wrap=True)
    if ctx.settings.export_enabled:
        with gr.Row():
            export = gr.Button("📦 Xuất phiếu bầu (JSONL)", scale=0, elem_id="votes-export")
            download = gr.DownloadButton("⬇️ Tải phiếu bầu", visible=False, scale=0, elem_id="votes-download")
        export.click(h.export, None, download, api_name="export_votes", concurrency_limit=1,
                     concurrency_id="export")
    limit = dict(concurrency_limit=2, concurrency_id="leaderboard")
    refresh.click(h.refresh, [include_named], [table, summary], api_name="leaderboard", **limit)
    include_named.change(h.refresh, [include_named], [table, summary], api_visibility="private", **limit)
    tab.select(h.refresh, [include_named], [table, summary], api_visibility="private", **limit)
    return h
