"""Reading evaluation reports (``vichat eval report`` output) for the Scoring tab.

A report directory holds ``report.json`` (``{"models": [{"label", "rows": [{"category",
"questions", "n", "score", "ci", ...}], "total": {...}}, ...]}``), ``report.md`` and optionally
``report.png``. Only directories under the configured roots (``VICHAT_REPORTS``) are offered: the
page never opens a path a visitor typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from ..records import VichatError

REPORT_JSON = "report.json"


def display_name(category: str) -> str:
    """``common-sense`` -> ``Common-Sense``, the paper's spelling (as the report's Markdown does)."""
    if category == "total":
        return "Total"
    return "-".join(part[:1].upper() + part[1:] for part in category.split("-"))


def find_reports(roots: Sequence[Path], max_depth: int = 3) -> dict[str, Path]:
    """Report directories under ``roots``, by a label (``root-name/sub/dir``), sorted."""
    found: dict[str, Path] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = [root] + [p.parent for p in root.rglob(REPORT_JSON) if len(p.relative_to(root).parts) <= max_depth]
        for d in candidates:
            if (d / REPORT_JSON).is_file():
                rel = d.relative_to(root).as_posix()
                label = root.name if rel == "." else f"{root.name}/{rel}"
                found.setdefault(label, d)
    return dict(sorted(found.items()))


@dataclass
class ReportView:
    """What the tab shows for one report."""

    table: pd.DataFrame
    chart: pd.DataFrame
    png: Path | None
    markdown: str
    models: list[str]


def load_report(directory: Path) -> ReportView:
    """The Table III layout (categories as rows, one column per model), bar-chart data, the PNG."""
    path = Path(directory) / REPORT_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        models = doc["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VichatError(f"{path}: not a readable evaluation report ({type(exc).__name__}: {exc})") from None
    labels: list[str] = []
    scores: dict[str, dict[str, Any]] = {}
    samples: dict[str, int] = {}
    order: list[str] = []
    chart_rows: list[dict[str, Any]] = []
    for model in models:
        label = str(model.get("label") or model.get("model_id") or f"model {len(labels) + 1}")
        labels.append(label)
        for row in [*model.get("rows", []), model.get("total") or {}]:
            cat = row.get("category")
            if not cat:
                continue
            cat = "total" if cat == "total" else cat
            if cat not in order:
                order.append(cat)
            scores.setdefault(cat, {})[label] = row.get("score")
            samples[cat] = max(samples.get(cat, 0), int(row.get("questions") or row.get("n") or 0))
            if row.get("score") is not None:
                chart_rows.append({"category": display_name(cat), "model": label, "score": float(row["score"])})
    order = [c for c in order if c != "total"] + (["total"] if "total" in order else [])
    table = pd.DataFrame(
        [[display_name(c), samples.get(c, 0), 100, *[_num(scores[c].get(m)) for m in labels]] for c in order],
        columns=["Tasks", "Samples", "Baseline", *labels],
    )
    # Bars grouped by category (in the report's order), models side by side within each.
    rank = {display_name(c): k for k, c in enumerate(order)}
    chart_rows.sort(key=lambda r: (rank.get(r["category"], len(rank)), labels.index(r["model"])))
    chart = pd.DataFrame(chart_rows, columns=["category", "model", "score"])
    if len(labels) > 1:  # one bar per (category, model): the native plot would otherwise stack them
        chart["category"] = chart["category"] + " · " + chart["model"]
    md_path = Path(directory) / "report.md"
    png = Path(directory) / "report.png"
    return ReportView(
        table=table, chart=chart, png=png if png.is_file() else None,
        markdown=md_path.read_text(encoding="utf-8") if md_path.is_file() else "", models=labels,
    )


def _num(x: Any) -> Any:
    return round(float(x), 2) if isinstance(x, (int, float)) else None
