"""Assemble the app: four tabs over one backend, one vote store and one queue.

``build_app(backend, settings)`` returns the ``gr.Blocks`` (queue configured); theme and CSS are
``launch()`` arguments in Gradio 6, so :func:`launch_kwargs` supplies them and :func:`launch`
starts a server with both.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import gradio as gr

from ..serve.api import ChatBackend
from .arena import build_battle_panel
from .backend import Preparer
from .chat import build_chat_tab
from .context import AppContext
from .endpoints import HARD_CAP, PrivateEndpoints, bound_queue
from .generation import set_backend
from .leaderboard import build_leaderboard_tab
from .scoring import build_scoring_tab
from .settings import AppSettings

log = logging.getLogger("vichat.app")

CSS = """
#chat-history, #battle-a, #battle-b, #sbs-a, #sbs-b { font-size: 15px; }
footer { visibility: hidden; }
/* Tables in the theme's sans font: the monospace fallback of many systems lacks Vietnamese marks. */
#leaderboard-table *, #report-table *, #score-aspects * { font-family: var(--font) !important; }
"""

HEADER = """# 🇻🇳 {title}
Các mô hình ngôn ngữ tiếng Việt tinh chỉnh bằng LoRA, theo bài báo *Efficient Finetuning Large Language Models
For Vietnamese Chatbot*: trò chuyện, so tài ẩn danh trong đấu trường, xem bảng xếp hạng và chấm điểm.
<small>Mô hình có thể trả lời sai; đừng dùng câu trả lời y tế thay cho bác sĩ. Mô hình: {models}.</small>
"""


def build_app(backend: ChatBackend, settings: AppSettings | None = None, *, rng: random.Random | None = None,
              lenient: bool = False) -> gr.Blocks:
    """The whole app for ``backend``; ``rng`` makes arena draws reproducible in tests.

    ``lenient``: a votes database that cannot be opened gives an in-memory store and a warning in
    the page instead of an error (what a Space needs). The returned Blocks carries its
    :class:`AppContext` as ``demo.vichat`` (tests read the vote store through it).
    """
    settings = settings or AppSettings.from_env()
    ctx = AppContext.create(backend, settings, lenient=lenient)
    set_backend(backend)
    # Weights load in the background: the page is up at once and says how far loading got.
    preparer = Preparer(backend).start()
    log.info("vichat app: %d models, votes in %s", len(ctx.models), settings.votes_db)
    # delete_cache: Gradio's copies of files it served (vote exports) go after cache_ttl_s.
    ttl = settings.cache_ttl_s
    with gr.Blocks(title="vichat", analytics_enabled=False, delete_cache=(ttl, ttl)) as demo:
        gr.Markdown(HEADER.format(title=settings.title, models=", ".join(ctx.model_names) or "chưa có"))
        if ctx.warnings:
            gr.Markdown("\n".join(f"⚠️ {w}" for w in ctx.warnings), elem_id="storage-warning")
        loading = gr.Markdown(preparer.status(), elem_id="loading-status")
        timer = gr.Timer(2.0, active=not preparer.ready)

        def poll() -> tuple[str, Any]:
            return preparer.status(), gr.Timer(active=not preparer.ready)

        # Private events go through the queue: the browser calls queue=False events by name on
        # /gradio_api/run/<name>, which endpoints.PrivateEndpoints closes for private ones.
        private = dict(api_visibility="private", show_progress="hidden", concurrency_id="ui",
                       concurrency_limit=settings.default_concurrency)
        timer.tick(poll, None, [loading, timer], **private)
        demo.load(poll, None, [loading, timer], **private)
        with gr.Tabs():
            with gr.Tab("💬 Trò chuyện", id="chat"):
                build_chat_tab(ctx)
            with gr.Tab("⚔️ Đấu trường", id="arena"):
                with gr.Tabs():
                    with gr.Tab("Ẩn danh (battle)", id="arena-anonymous"):
                        build_battle_panel(ctx, "anonymous", rng)
                    with gr.Tab("Chọn mô hình (side-by-side)", id="arena-named"):
                        build_battle_panel(ctx, "named", rng)
            with gr.Tab("🏆 Bảng xếp hạng", id="leaderboard") as board_tab:
                build_leaderboard_tab(ctx, board_tab)
            with gr.Tab("🧑‍⚖️ Chấm điểm", id="scoring") as scoring_tab:
                build_scoring_tab(ctx, scoring_tab)
    # Gradio's max_size counts every waiting event: bound the expensive groups instead (endpoints.py).
    # api_open=False: /gradio_api/run/<name> serves queue=False events only, so no script can run a
    # generation past the queue and its concurrency limit (Gradio opens it except on Spaces).
    demo.queue(default_concurrency_limit=settings.default_concurrency, max_size=HARD_CAP, api_open=False)
    bound_queue(demo, settings.queue_size)
    demo.vichat = ctx  # type: ignore[attr-defined]
    demo.vichat_preparer = preparer  # type: ignore[attr-defined]
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Gradio 6 takes theme and CSS at launch. A theme object, never a name: a name is fetched
    from the Hub, which fails offline."""
    return {"theme": gr.themes.Soft(), "css": CSS}


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs: Any) -> Any:
    """Start the server (blocking unless ``prevent_thread_lock=True``); host/port default to
    Gradio's own environment variables (``GRADIO_SERVER_NAME``/``PORT``), as on Spaces.

    Uploads are capped at ``VICHAT_MAX_UPLOAD_SIZE`` (the app takes no files; Gradio's upload
    route exists anyway) and private events are refused on the named API routes."""
    from starlette.middleware import Middleware

    ctx = getattr(demo, "vichat", None)
    max_upload = ctx.settings.max_upload if ctx is not None else AppSettings().max_upload
    options: dict[str, Any] = {
        **launch_kwargs(),
        "max_file_size": max_upload,
        "app_kwargs": {"middleware": [Middleware(PrivateEndpoints, blocks=demo)]},
    }
    # show_error stays off: gr.Error messages (ours, already scrubbed) show anyway, while the text
    # of an unexpected exception could carry internals.
    return demo.launch(server_name=host, server_port=port, **{**options, **kwargs})


def banner(demo: gr.Blocks) -> str:
    """What this app runs with, for the top of the log: where votes go, how visitors are told
    apart, the limits, judges and export. No secret appears in it."""
    ctx: AppContext = demo.vichat  # type: ignore[attr-defined]
    s = ctx.settings
    votes = (f"{s.votes_db}" if ctx.votes.persistent
             else f"IN MEMORY ONLY (lost on restart): {s.votes_db} could not be opened")
    source = (f"header {s.trusted_proxy_header!r}, {s.trusted_proxy_hops} trusted hop(s)" if s.trusted_proxy_header
              else "TCP peer (set VICHAT_TRUSTED_PROXY_HEADER behind a reverse proxy)")
    from .scoring import ScoringHandlers

    lines = [
        f"vichat app {ctx.version or ''}: {s.title}",
        f"  models        : {', '.join(ctx.model_names) or 'none'}",
        f"  votes         : {votes}",
        f"  client address: {source}; stored only as a salted hash",
        f"  limits        : votes {s.vote_rate}/session, {s.address_vote_rate}/address; messages {s.message_rate}/"
        f"session, {s.address_message_rate}/address; new sessions {s.session_rate}/address",
        f"  input         : {s.max_input_chars} chars/message, {s.max_turns} turns, {s.max_history_chars} chars of "
        f"history; uploads up to {s.max_upload}",
        f"  judges        : {', '.join(ScoringHandlers(ctx).judges()) or 'none'}",
        f"  vote export   : {'on (admin token)' if s.export_enabled and s.admin_token else 'off (no VICHAT_ADMIN_TOKEN)'}",
    ]
    lines += [f"  WARNING       : {w}" for w in ctx.warnings]
    if os.environ.get("SPACE_ID") and not s.trusted_proxy_header:
        # On Spaces the TCP peer is the platform's proxy: every visitor would share its limits.
        lines.append("  WARNING       : running on a Space without VICHAT_TRUSTED_PROXY_HEADER: all visitors share "
                     "the proxy's address and its limits (set it to x-forwarded-for, see docs/app.md)")
    width = max(len(line) for line in lines)
    return "\n".join(["=" * width, *lines, "=" * width])


def app_from_env(models_config: str | None = None, *, fake: bool = False, settings: AppSettings | None = None,
                 lenient: bool = False) -> gr.Blocks:
    """The app as configured by the environment: ``VICHAT_*`` settings and the models
    configuration (``models_config``, else ``VICHAT_MODELS_CONFIG``, else the machine's default).
    What ``spaces_app.py`` and ``vichat serve`` run. ``lenient``: a models configuration that
    cannot be used gives a page saying why (the Space stays up) instead of raising."""
    from ..records import VichatError
    from .backend import NoModels, load_backend
    from .safety import describe_error

    log_to_stderr()
    try:
        backend = load_backend(models_config, fake=fake)
    except VichatError as exc:
        if not lenient:
            raise
        log.error("no models: %s", describe_error(exc))
        backend = NoModels(describe_error(exc))
    if settings is None:
        try:
            settings = AppSettings.from_env()
        except VichatError as exc:
            if not lenient:
                raise
            # A typo in one variable must not crash-loop a Space: defaults, and the log says why.
            log.error("ignoring the VICHAT_* settings, using defaults: %s", describe_error(exc))
            print(f"vichat: ignoring the VICHAT_* settings, using defaults: {describe_error(exc)}", flush=True)
            settings = AppSettings()
    demo = build_app(backend, settings, lenient=lenient)
    text = banner(demo)
    if lenient:
        print(text, flush=True)  # a Space's log shows stdout: the first thing an operator reads
    else:
        log.info("%s", text)
    return demo


def log_to_stderr() -> bool:
    """Send the app's log (``vichat.*``, INFO and up: refusals, model errors, the banner) to stderr,
    the server's log, unless logging is configured already (a handler on the root or ``vichat``
    logger: then the host application decides). Without it Python prints warnings only, and the
    one-line refusals that docs/app.md promises in the log never appear. Whether it installed one."""
    root, ours = logging.getLogger(), logging.getLogger("vichat")
    if root.handlers or ours.handlers:
        return False
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET or ours.level > logging.INFO:
        ours.setLevel(logging.INFO)
    return True
