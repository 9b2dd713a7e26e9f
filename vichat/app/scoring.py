"""The Scoring tab: a judge plugin scores two answers to a question; evaluation reports.

The question and answers are typed or taken from the visitor's current battle (server-side, so
names stay hidden until voted: the answers are labelled Assistant 1/2 only). The judge is any
remote judge (``openai``) unless the operator lists others in ``VICHAT_APP_JUDGES``: a judge that
loads a model in-process (``local``) is offered only when listed, and then only with the model the
operator fixed in ``VICHAT_APP_JUDGE_MODEL`` (a visitor never makes the server load a model).
``VICHAT_APP_JUDGE_MODEL`` also fixes a remote judge's model so a visitor cannot pick a dearer
one; calls are rate-limited per session and per address. Everything shown (scores, explanation,
errors) has configured secrets masked: a judge endpoint that echoes its request must not put the
key on the page. API keys stay in the
environment: a missing one is reported by name, never by value. Endpoints: ``score``,
``score_from_battle``, ``report``.
"""

from __future__ import annotations

import os
from typing import Any

import gradio as gr
import pandas as pd

from ..evaluate.judge import JudgeSettings
from ..evaluate.runner import judge_keywords
from ..records import VichatError
from .context import AppContext
from .controls import refuse_bad_values
from .reports import find_reports, load_report
from .safety import check_message, refuse, scrub, visitor_error
from .settings import REMOTE_JUDGES

#: Judges that run a model inside this process: never offered unless listed, never with a
#: visitor-chosen model.
IN_PROCESS_JUDGES = ("local",)

ASPECT_COLUMNS = ["Khía cạnh (aspect)", "Trợ lý 1", "Trợ lý 2"]


def _registry() -> Any:
    from ..plugins import get_registry

    return get_registry()


def _prompt_book() -> Any:
    from ..evaluate.prompts import load_prompts  # the evaluation package owns the judge prompts

    return load_prompts(prompt_sets=_registry().all("judge_prompts"))


class ScoringHandlers:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    # -- choices ---------------------------------------------------------------------------------
    def judges(self) -> list[str]:
        """Registered judges that ``VICHAT_APP_JUDGES`` lists (unset: the remote ones only)."""
        try:
            names = _registry().names("judges")
        except Exception:  # noqa: BLE001 - a broken plugin set must not stop the app
            return []
        allowed = self.ctx.settings.judges if self.ctx.settings.judges is not None else REMOTE_JUDGES
        return [n for n in names if n in allowed]

    def prompts(self) -> list[str]:
        """Judge prompt keys (``prompt_id@vN``), newest version of each, general first."""
        try:
            book = _prompt_book()
            keys = [p.key for s in book.sets() for p in book.latest(s)]
        except Exception:  # noqa: BLE001
            return []
        return sorted(keys, key=lambda k: (0 if "general" in k else 1, k))

    def _prompt(self, key: str | None) -> Any:
        book = _prompt_book()
        if key:
            # "vicuna-general@v1" is one version; "vicuna-general" is its newest.
            matches = [p for p in book.prompts.values() if key in (p.key, p.prompt_id)]
            if matches:
                return max(matches, key=lambda p: p.version)
            raise VichatError(f"Không có lời nhắc chấm điểm {str(key)[:80]!r}.")
        return book.for_category("generic")

    def judge_default_model(self, name: str | None) -> str:
        """The model box's value for judge ``name`` (only judges on offer are looked up)."""
        if self.ctx.settings.judge_model:
            return self.ctx.settings.judge_model
        if not name or name not in self.judges():
            return ""
        try:
            return _registry().judge(name).default_model
        except Exception:  # noqa: BLE001
            return ""

    # -- judging -----------------------------------------------------------------------------------
    def score(self, judge: str, judge_model: str, prompt_key: str, aspects: bool, question: str, answer1: str,
              answer2: str, request: gr.Request = None) -> tuple[str, pd.DataFrame, str]:
        """Judge the pair; returns a summary, the per-aspect table and the judge's explanation."""
        empty = pd.DataFrame(columns=ASPECT_COLUMNS)
        settings = self.ctx.settings
        try:
            question = check_message(question, settings.max_input_chars)
            answer1 = check_message(answer1, settings.max_answer_chars)
            answer2 = check_message(answer2, settings.max_answer_chars)
            if judge not in self.judges():
                raise VichatError(f"Không có giám khảo {str(judge)[:80]!r} trong bản demo này.")
            if judge in IN_PROCESS_JUDGES and not settings.judge_model:
                raise VichatError(f"Giám khảo {judge!r} chạy mô hình trên máy chủ này: người vận hành cần đặt "
                                  "VICHAT_APP_JUDGE_MODEL (mô hình đã có sẵn) để dùng nó.")
            spec = _registry().judge(judge)
            missing = [v for v in spec.env_vars if not os.environ.get(v)]
            if missing:
                raise VichatError(f"Giám khảo {judge!r} cần biến môi trường {', '.join(missing)} "
                                  "(trên Hugging Face Spaces: Settings → Secrets).")
            prompt = self._prompt(prompt_key)
            self.ctx.limit("judge", self.ctx.visitor(request))
        except VichatError as exc:
            raise refuse(exc, "score") from None
        # A fixed judge model (VICHAT_APP_JUDGE_MODEL) wins over whatever the client sent.
        model = (self.ctx.settings.judge_model or judge_model or "").strip()
        options = judge_keywords(spec, JudgeSettings(judge=judge, model=model, aspects=bool(aspects)), _registry())
        try:
            result = spec.judge(question, answer1, answer2, prompt, policy=None, **options)
        except Exception as exc:  # noqa: BLE001 - shown inline; the app stays up
            message = f"Giám khảo {judge} gặp lỗi: {visitor_error(exc, self.ctx.settings.error_detail, f'judge {judge}')}"
            gr.Warning(message)
            return f"⚠️ {message}", empty, ""
        return scrub(_summary(result)), _aspects(result), scrub(_explanation(result))

    def from_battle(self, request: gr.Request = None) -> tuple[str, str, str, str]:
        """The question and both answers of the session's latest battle turn."""
        try:
            battle = self.ctx.battles.latest(self.ctx.session(request))
        except VichatError as exc:
            raise refuse(exc, "score_from_battle") from None
        if battle is None or not battle.turns:
            gr.Warning("Chưa có trận đấu nào có câu trả lời. Hãy đấu một trận ở tab Đấu trường trước.")
            return gr.update(), gr.update(), gr.update(), "⚠️ Chưa có trận đấu nào."
        prompt, a, b = battle.turns[-1]
        who = (f"A = {battle.models[0]}, B = {battle.models[1]}" if battle.vote or battle.mode == "named"
               else "tên mô hình hiện sau khi bạn bầu chọn")
        return scrub(prompt), scrub(a), scrub(b), f"Lấy từ trận {battle.id}: Trợ lý 1 là A, Trợ lý 2 là B ({who})."

    # -- reports -------------------------------------------------------------------------------------
    def report_choices(self) -> list[str]:
        return list(find_reports(self.ctx.settings.report_dirs))

    def report(self, label: str) -> tuple[pd.DataFrame, Any, Any, str]:
        """The chosen report's table, bar-chart data, PNG and Markdown."""
        directory = find_reports(self.ctx.settings.report_dirs).get(label or "")
        if directory is None:
            raise gr.Error("Hãy chọn một báo cáo trong danh sách (thư mục trong VICHAT_REPORTS).")
        try:
            view = load_report(directory)
        except VichatError as exc:
            raise gr.Error(visitor_error(exc, self.ctx.settings.error_detail, f"report {label}")) from None
        image = gr.update(value=None, visible=False)
        if view.png is not None:
            from PIL import Image  # a PIL image, not a path: report roots need not be Gradio-allowed paths

            with Image.open(view.png) as im:
                image = gr.update(value=im.copy(), visible=True)
        # Keep the report's category order (the plot would sort the labels alphabetically).
        chart = gr.update(value=view.chart, sort=list(view.chart["category"]))
        return view.table, chart, image, view.markdown


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


def _summary(result: Any) -> str:
    if not result.ok:
        return f"⚠️ Không đọc được điểm từ câu trả lời của giám khảo: {result.error or 'không rõ lý do'}."
    s1, s2 = result.score1, result.score2
    verdict = "Trợ lý 1 tốt hơn" if s1 > s2 else "Trợ lý 2 tốt hơn" if s2 > s1 else "Hòa"
    return f"### Trợ lý 1: {_fmt(s1)} · Trợ lý 2: {_fmt(s2)}\n**{verdict}** (thang 1–10)."


def _aspects(result: Any) -> pd.DataFrame:
    rows = [[name, _fmt(pair[0]), _fmt(pair[1])] for name, pair in dict(result.aspects or {}).items()]
    return pd.DataFrame(rows, columns=ASPECT_COLUMNS)


def _explanation(result: Any) -> str:
    text = result.raw or ""
    aspects_error = getattr(result, "aspects_error", None)
    if aspects_error:
        text += f"\n\n[vichat: could not read the aspect scores: {aspects_error}]"
    return text


def build_scoring_tab(ctx: AppContext, tab: Any = None) -> ScoringHandlers:
    """Lay out the tab: judging on top, reports below. Selecting ``tab`` re-lists the reports, so
    reports written while the app runs show up."""
    h = ScoringHandlers(ctx)
    judges = h.judges()
    default_judge = "openai" if "openai" in judges else (judges[0] if judges else None)
    prompts = h.prompts()
    gr.Markdown("### Chấm điểm hai câu trả lời\nMột giám khảo (plugin) chấm hai câu trả lời cho cùng một câu "
                "hỏi theo thang 1–10, như GPT-4 trong bài báo. Khóa API (nếu cần) lấy từ biến môi trường.")
    with gr.Row():
        judge = gr.Dropdown(judges, value=default_judge, label="Giám khảo (judge)", elem_id="score-judge")
        judge_model = gr.Textbox(h.judge_default_model(default_judge), label="Mô hình giám khảo (tùy chọn)",
                                 interactive=not ctx.settings.judge_model)
        # allow_custom_value: the API takes a prompt by id ("vicuna-general": its newest version) as
        # docs/app.md says, not only the listed keys; the handler resolves it or refuses in one line.
        prompt = gr.Dropdown(prompts, value=prompts[0] if prompts else None, label="Lời nhắc chấm điểm",
                             allow_custom_value=True)
        aspects = gr.Checkbox(False, label="Chấm từng khía cạnh")
    refuse_bad_values([judge, prompt], "score")
    question = gr.Textbox(label="Câu hỏi", lines=2, elem_id="score-question")
    with gr.Row():
        answer1 = gr.Textbox(label="Trợ lý 1", lines=6, elem_id="score-answer1")
        answer2 = gr.Textbox(label="Trợ lý 2", lines=6, elem_id="score-answer2")
    with gr.Row():
        take = gr.Button("⚔️ Lấy từ trận đấu hiện tại", elem_id="score-from-battle")
        run = gr.Button("🧑‍⚖️ Chấm điểm", variant="primary", elem_id="score-run")
    note = gr.Markdown()
    summary = gr.Markdown(elem_id="score-summary")
    aspect_table = gr.Dataframe(pd.DataFrame(columns=ASPECT_COLUMNS), interactive=False, label="Điểm theo khía cạnh",
                                elem_id="score-aspects")
    explanation = gr.Textbox(label="Giải thích của giám khảo", lines=6, interactive=False)

    # Private events are queued (not queue=False): see vichat/app/endpoints.py.
    private = dict(api_visibility="private", show_progress="hidden", concurrency_id="ui",
                   concurrency_limit=ctx.settings.default_concurrency)
    judge.change(h.judge_default_model, [judge], [judge_model], **private)
    take.click(h.from_battle, None, [question, answer1, answer2, note], api_name="score_from_battle", queue=False)
    run.click(h.score, [judge, judge_model, prompt, aspects, question, answer1, answer2],
              [summary, aspect_table, explanation], api_name="score",
              concurrency_limit=ctx.settings.judge_concurrency, concurrency_id="judge")

    gr.Markdown("### Báo cáo đánh giá\nKết quả của `vichat eval report` (bảng theo bố cục Table III của bài báo "
                "và biểu đồ; 100 = mô hình đối chứng).")
    choices = h.report_choices()
    with gr.Row():
        # allow_custom_value: the list changes while the app runs; the handler only opens listed ones.
        report = gr.Dropdown(choices, value=choices[0] if choices else None, label="Báo cáo", elem_id="report-choice",
                             allow_custom_value=True,
                             info=None if choices else "Chưa có báo cáo: đặt VICHAT_REPORTS tới thư mục báo cáo.")
        show = gr.Button("📊 Xem báo cáo", scale=0, elem_id="report-show")
    table = gr.Dataframe(interactive=False, label="Điểm tương đối theo nhóm câu hỏi", elem_id="report-table")
    chart = gr.BarPlot(x="category", y="score", color="model", y_lim=[0, None], x_label_angle=-40,
                       label="Điểm tương đối (đối chứng = 100)", elem_id="report-chart")
    image = gr.Image(label="Biểu đồ của báo cáo (report.png)", type="pil", interactive=False, visible=False)
    with gr.Accordion("Chi tiết (report.md)", open=False):
        details = gr.Markdown()
    show.click(h.report, [report], [table, chart, image, details], api_name="report", concurrency_limit=2,
               concurrency_id="report")
    if tab is not None:
        tab.select(lambda: gr.update(choices=h.report_choices()), None, report, **private)
    return h
