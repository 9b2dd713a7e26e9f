"""Report outputs: a Markdown table laid out like the paper's Table III, ``report.json`` and a
bar chart (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .report import CategoryStats, ModelReport, display_name


def _num(x: float | None) -> str:
    """Two decimals without trailing zeros, as the paper prints (87.5, 50, 91.25)."""
    if x is None:
        return "n/a"
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _pct(rate: dict[str, Any]) -> str:
    if not rate["of"]:
        return "n/a"
    return f"{rate['rate'] * 100:.0f}% ({rate['count']}/{rate['of']})"


def _baseline_name(reports: Sequence[ModelReport]) -> str:
    names = sorted({r.baseline_id for r in reports if r.baseline_id})
    return " / ".join(names) + " (baseline)" if names else "Baseline"


def table_iii(reports: Sequence[ModelReport]) -> list[str]:
    """Categories as rows; the baseline (= 100) and one column per model, as in Table III."""
    cats: list[str] = []
    for r in reports:
        cats += [row.category for row in r.rows if row.category not in cats]
    header = ["Tasks", "Samples", _baseline_name(reports), *[r.label for r in reports]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for cat in [*cats, "total"]:
        found = [next((row for row in r.rows if row.category == cat), None) if cat != "total" else r.total for r in reports]
        samples = max((row.questions for row in found if row is not None), default=0)
        cells = ["Total" if cat == "total" else display_name(cat), str(samples), "100"]
        cells += [_num(row.score) if row is not None else "" for row in found]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def details(report: ModelReport) -> list[str]:
    """A model's rows with n, interval, wins/ties/losses and failures; then its bias diagnostics."""
    title = f"### {report.label}" + (f" ({report.model_id} vs {report.baseline_id})" if report.model_id else "")
    lines = [title, "", f"Source: `{report.source}`", "",
             "| Tasks | n | Score | 95% CI | W/T/L | Failed | Model mean | Baseline mean |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def row_line(row: CategoryStats) -> str:
        ci = f"{row.ci[0]:.1f}–{row.ci[1]:.1f}" if row.ci else "n/a"
        failed = f"{row.failed_questions} q / {row.failed_judgments} j" if row.failed_judgments else "0"
        name = "Total" if row.category == "total" else display_name(row.category)
        return (f"| {name} | {row.n} | {_num(row.score)} | {ci} | {row.wins}/{row.ties}/{row.losses} | {failed} | "
                f"{_num(row.mean_model)} | {_num(row.mean_baseline)} |")

    lines += [row_line(r) for r in [*report.rows, report.total]]
    b = report.bias
    margin = b["mean_margin_change_on_swap"]
    lines += [
        "",
        f"Bias: order flips the verdict {_pct(b['order_flips'])}"
        + (f", mean margin change on swap {margin:.2f}" if margin is not None else " (one order only: use --protocol swap)")
        + f"; first position wins {_pct(b['first_position_wins'])}, second {_pct(b['second_position_wins'])},"
        f" ties {_pct(b['ties'])}; longer answer wins {_pct(b['longer_answer_wins'])}.",
        f"Readable judgments: {b['readable']}/{b['judgments']}.",
    ]
    if report.reparsed:
        lines.append(f"Re-read by vichat's parser where the file's score was missing or differs: {len(report.reparsed)} "
                     "(see report.json `reparsed`).")
    for f in report.failures[:20]:
        lines.append(f"- unreadable: question {f['question_id']} at {f['where']}: {f['error']}")
    if len(report.failures) > 20:
        lines.append(f"- ... {len(report.failures) - 20} more in report.json")
    return lines


def markdown(reports: Sequence[ModelReport]) -> str:
    """The whole Markdown report."""
    lines = ["# Evaluation report", "",
             "Relative score: for each question, model score / baseline score × 100 (the baseline is 100); a "
             "category is the mean over its questions; Total is the sample-weighted mean of the categories. "
             "Unreadable judgments are counted (Failed), never averaged in.", "",
             *table_iii(reports), ""]
    for r in reports:
        lines += [*details(r), ""]
    return "\n".join(lines)


def bar_chart(reports: Sequence[ModelReport], path: Path) -> None:
    """Grouped bars per category with 95% intervals; a dashed line at the baseline's 100."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats: list[str] = []
    for r in reports:
        cats += [row.category for row in r.rows if row.category not in cats]
    cats.append("total")
    width = 0.8 / max(1, len(reports))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(cats) + 3.5), 4.2))
    for i, r in enumerate(reports):
        rows = {row.category: row for row in [*r.rows, r.total]}
        xs, ys, errs = [], [], [[], []]
        for j, cat in enumerate(cats):
            row = rows.get(cat)
            if row is None or row.score is None:
                continue
            xs.append(j + (i - (len(reports) - 1) / 2) * width)
            ys.append(row.score)
            lo, hi = row.ci if row.ci else (row.score, row.score)
            errs[0].append(max(0.0, row.score - lo))
            errs[1].append(max(0.0, hi - row.score))
        ax.bar(xs, ys, width=width, label=r.label, yerr=errs, capsize=2)
    ax.axhline(100, color="grey", linestyle="--", linewidth=1, label=f"{_baseline_name(reports)} = 100")
    ax.set_xticks(range(len(cats)), [("Total" if c == "total" else display_name(c)) for c in cats], rotation=30, ha="right")
    ax.set_ylabel("relative score")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(reports: Sequence[ModelReport], out_dir: str | Path, *, png: bool = True,
                  meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and (unless ``png`` is False) ``report.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json"}
    paths["markdown"].write_text(markdown(reports) + "\n", encoding="utf-8")
    doc = {**(meta or {}), "models": [r.to_dict() for r in reports]}
    paths["json"].write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if png:
        paths["png"] = out / "report.png"
        bar_chart(reports, paths["png"])
    return paths
