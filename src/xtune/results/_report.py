"""`tune report`: one self-contained HTML page that draws a search.

Plotly draws it, as ``optuna.visualization`` does: interactive (hover a point to see
its trial and architecture, zoom, hide a series) and self-contained (plotly.js is
inlined once, so the file opens without network access). Sections: the optimization
history, accuracy against parameters with the Pareto front, the Hyperband brackets
and who was promoted, learning curves of the best trials, each hyperparameter's
effect on the score, and the exports' test results side by side. Every trial's data
is also embedded as JSON (``<script id="xtune-data">``).
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path

from xtune import _atomic
from xtune.results._rows import class_names, pareto_front, trial_rows
from xtune.search._state import load_project

REPORT_FILE = "report.html"
_PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")


def write_report(project: Path, out: Path | None = None) -> Path:
    """Write the report of the search in ``project`` (default ``runs/NAME/report.html``); return its path.

    Raises:
        ProjectError: No search at ``project``.
    """
    state = load_project(project)
    out = Path(out) if out is not None else Path(project) / REPORT_FILE
    rows = trial_rows(state)
    completed = [r for r in rows if r["status"] == "COMPLETED" and r["score"] is not None]
    sections = [
        ("Optimization history", "Each trial's score, in the order the trials ran, and the best so far.",
         _history(state, completed)),
        ("Accuracy against size", "Every completed trial; the line joins the Pareto front: no other trial is at "
                                  "least as good on the score, parameters and FLOPs, and better on one.",
         _front(state, completed)),
        ("Hyperband brackets", "Each bracket's rounds: a line joins a trial to its promotion, which continues it "
                               "for more epochs.", _brackets(state, completed)),
        ("Learning curves", f"The {min(5, len(completed))} best trials' {state.objective} per epoch, their "
                            "promotions included (one training run in pieces).", _curves(state, completed)),
        ("Hyperparameters", "The score by each searched hyperparameter's value; the title gives the share of the "
                            "score's variance that the hyperparameter explains (eta squared).",
         _effects(state, completed)),
    ]
    figures = [(title, text, fig) for title, text, fig in sections if fig is not None]
    page = _page(state, rows, figures, _exports(project))
    _atomic.write_text(out, page)
    return out


# -- figures -----------------------------------------------------------------------------------------


def _hover(r: dict) -> str:
    from xtune.spaces import MiniXceptionConfig

    arch = MiniXceptionConfig.from_values(r["values"]).shorthand()
    return (f"trial {r['trial_id']} (b{r['bracket']} r{r['round']}, epochs {r['initial_epoch']}->{r['epochs']})<br>"
            f"{r['objective']} {r['score']:.4f}<br>{r['params']:,} params<br>{arch}")


def _history(state, completed):
    import plotly.graph_objects as go

    if not completed:
        return None
    ordered = sorted(completed, key=lambda r: int(r["trial_id"]))
    fig = go.Figure()
    for bracket in sorted({r["bracket"] for r in ordered}):
        these = [r for r in ordered if r["bracket"] == bracket]
        fig.add_scatter(x=[int(r["trial_id"]) for r in these], y=[r["score"] for r in these], mode="markers",
                        name=f"bracket {bracket}", hovertext=[_hover(r) for r in these], hoverinfo="text",
                        marker={"color": _PALETTE[bracket % len(_PALETTE)], "size": 9})
    best, line = None, []
    for r in ordered:
        if best is None or (r["score"] > best if state.maximize else r["score"] < best):
            best = r["score"]
        line.append(best)
    fig.add_scatter(x=[int(r["trial_id"]) for r in ordered], y=line, mode="lines", name="best so far",
                    line={"shape": "hv", "color": "#333"})
    fig.update_xaxes(tickformat="d")
    return _layout(fig, "trial", state.objective)


def _front(state, completed):
    import plotly.graph_objects as go

    if not completed:
        return None
    front = {t.trial_id for t in pareto_front(state)}
    fig = go.Figure()
    others = [r for r in completed if r["trial_id"] not in front]
    on = sorted((r for r in completed if r["trial_id"] in front), key=lambda r: r["params"])
    fig.add_scatter(x=[r["params"] for r in others], y=[r["score"] for r in others], mode="markers", name="trials",
                    hovertext=[_hover(r) for r in others], hoverinfo="text", marker={"color": "#9ecae1", "size": 8})
    fig.add_scatter(x=[r["params"] for r in on], y=[r["score"] for r in on], mode="lines+markers",
                    name="Pareto front", hovertext=[_hover(r) for r in on], hoverinfo="text",
                    line={"shape": "hv", "color": _PALETTE[1]}, marker={"size": 11})
    fig.update_xaxes(type="log")
    return _layout(fig, "parameters (log scale)", state.objective)


def _brackets(state, completed):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    by_id = {r["trial_id"]: r for r in completed}
    brackets = sorted({(r["bracket"]) for r in completed})
    if not brackets:
        return None
    fig = make_subplots(rows=1, cols=len(brackets), shared_yaxes=True,
                        subplot_titles=[f"bracket {b}" for b in brackets])
    for col, bracket in enumerate(brackets, start=1):
        these = [r for r in completed if r["bracket"] == bracket]
        for r in these:
            parent = by_id.get(r["parent"])
            if parent is not None:
                fig.add_trace(go.Scatter(x=[parent["epochs"], r["epochs"]], y=[parent["score"], r["score"]],
                                         mode="lines", line={"color": "#bbb"}, showlegend=False, hoverinfo="skip"),
                              row=1, col=col)
        fig.add_trace(go.Scatter(x=[r["epochs"] for r in these], y=[r["score"] for r in these], mode="markers",
                                 hovertext=[_hover(r) for r in these], hoverinfo="text", showlegend=False,
                                 marker={"size": 9, "color": [_PALETTE[(r["round"] or 0) % len(_PALETTE)] for r in these]}),
                      row=1, col=col)
        fig.update_xaxes(title_text="epochs (round budget)", tickformat="d", row=1, col=col)
    fig.update_yaxes(title_text=state.objective, row=1, col=1)
    return _layout(fig, None, None)


def _curves(state, completed):
    import plotly.graph_objects as go

    if not completed:
        return None
    by_id = {t.trial_id: t for t in state.trials}
    fig = go.Figure()
    for k, r in enumerate(completed[:5]):
        history: dict[int, dict] = {}
        trial = by_id[r["trial_id"]]
        while trial is not None:  # the lineage: the trial and its parents
            for h in trial.record.history:
                history.setdefault(h["epoch"], h)
            trial = by_id.get(trial.parent) if trial.parent else None
        epochs = sorted(history)
        fig.add_scatter(x=epochs, y=[history[e].get(state.objective) for e in epochs], mode="lines+markers",
                        name=f"#{r['rank']} trial {r['trial_id']}", line={"color": _PALETTE[k % len(_PALETTE)]})
    fig.update_xaxes(tickformat="d")
    return _layout(fig, "epoch", state.objective)


def eta_squared(groups: dict) -> float | None:
    """Between-group share of the variance of the scores (0: no effect, 1: the value decides)."""
    scores = [s for values in groups.values() for s in values]
    if len(scores) < 3 or len(groups) < 2:
        return None
    mean = sum(scores) / len(scores)
    total = sum((s - mean) ** 2 for s in scores)
    if total == 0:
        return 0.0
    between = sum(len(v) * (sum(v) / len(v) - mean) ** 2 for v in groups.values() if v)
    return between / total


def _effects(state, completed):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from xtune.results._rows import space_of

    searched = list(space_of(state).searched())
    if not completed or not searched:
        return None
    effects = []
    for spec in searched:
        groups: dict = {}
        for r in completed:
            if spec.name in r["values"]:
                groups.setdefault(r["values"][spec.name], []).append(r["score"])
        effects.append((spec.name, groups, eta_squared(groups)))
    effects.sort(key=lambda e: -(e[2] or 0))
    cols = 3
    nrows = math.ceil(len(effects) / cols)
    titles = [f"{name} ({'-' if eta is None else f'{eta:.2f}'})" for name, _, eta in effects]
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, shared_yaxes=True,
                        vertical_spacing=0.5 / max(nrows, 1))
    for i, (_, groups, _) in enumerate(effects):
        xs = [str(v) for v, scores in groups.items() for _ in scores]
        ys = [s for scores in groups.values() for s in scores]
        fig.add_trace(go.Box(x=xs, y=ys, boxpoints="all", jitter=0.4, pointpos=0, showlegend=False,
                             marker={"color": _PALETTE[0], "size": 5}, line={"width": 1}),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=260 * nrows)
    return _layout(fig, None, None)


def _layout(fig, x_title, y_title):
    fig.update_layout(template="plotly_white", margin={"l": 60, "r": 20, "t": 40, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, hoverlabel={"align": "left"})
    if x_title:
        fig.update_xaxes(title_text=x_title)
    if y_title:
        fig.update_yaxes(title_text=y_title)
    return fig


# -- the page --------------------------------------------------------------------------------------


def _exports(project: Path) -> list[dict]:
    """The cards of the search's exports (export, export-*, export-pareto/*)."""
    folders = sorted(Path(project).glob("export*/model_card.json")) + sorted(
        Path(project).glob("export-pareto/*/model_card.json"))
    out = []
    for path in folders:
        try:
            card = _atomic.read_json(path)
        except (OSError, ValueError):
            continue
        out.append({"folder": str(path.parent.relative_to(project)), "name": card.get("name"),
                    "trial": (card.get("model") or {}).get("trial_id"), "params": (card.get("model") or {}).get("params"),
                    "test_accuracy": (card.get("test") or {}).get("accuracy"), "test_loss": (card.get("test") or {}).get("loss"),
                    "epochs": (card.get("training") or {}).get("epochs"),
                    "shipped": ((card.get("training") or {}).get("selection") or {}).get("shipped")})
    return out


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _page(state, rows, figures, exports) -> str:
    from xtune.spaces import MiniXceptionConfig

    blocks, first = [], True
    for title, text, fig in figures:
        div = fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False})
        first = False
        blocks.append(f"<section><h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{div}</section>")
    table_rows = [{**r, "architecture": MiniXceptionConfig.from_values(r["values"]).shorthand() if r["values"] else None,
                   "b/r": f"b{r['bracket']} r{r['round']}"} for r in rows]
    trials = _table(table_rows, ["rank", "trial_id", "status", "b/r", "initial_epoch", "epochs", "score",
                                 "tie_breaker", "params", "flops", "architecture", "reason"])
    exported = (_table(exports, ["folder", "name", "trial", "shipped", "params", "epochs", "test_accuracy", "test_loss"])
                if exports else "<p>No export yet: <code>tune export --project ...</code></p>")
    best = state.best
    summary = (f"{state.label}; {len(state.ended)} of {state.plan.total_trials} planned trials ended; "
               f"ranked by {state.objective}")
    if best is not None:
        summary += f"; best: trial {best.trial_id}, {best.score:.4f}"
    data = {"project": str(state.path), "objective": state.objective, "state": state.label,
            "classes": class_names(state), "trials": rows}
    return _HTML.format(
        title=html.escape(f"xtune report: {state.path}"), summary=html.escape(summary),
        generated=time.strftime("%Y-%m-%d %H:%M"), figures="\n".join(blocks), trials=trials, exports=exported,
        data=html.escape(json.dumps(data, default=str), quote=False))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 2em; }}
table {{ border-collapse: collapse; font-size: 0.85em; }} td, th {{ border-bottom: 1px solid #ddd; padding: 3px 8px;
text-align: left; }}
.meta {{ color: #666; }}
</style></head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<p class="meta">Written by <code>tune report</code> on {generated}; opens without network access.</p>
{figures}
<section><h2>Exports</h2>{exports}</section>
<section><h2>Trials</h2>{trials}</section>
<script type="application/json" id="xtune-data">{data}</script>
</body></html>
"""
