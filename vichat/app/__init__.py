"""The Gradio app: chat, arena (blind battles, votes, leaderboard) and scoring tabs.

``from vichat.app import build_app, app_from_env, launch`` (imported lazily, so importing
``vichat.app.commands`` for the CLI does not load gradio). docs/app.md describes the app.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app_from_env", "build_app", "launch", "launch_kwargs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'vichat.app' has no attribute {name!r}")
