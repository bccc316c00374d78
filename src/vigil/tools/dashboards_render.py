"""The dashboards' PromQL, read from ``dashboards/``, evaluated on a Prometheus, and drawn to PNG.

Used by ``tests/test_prometheus.py`` (every panel query and every rule against a live worker) and to
render ``docs/dashboards/*.png`` from the same queries (matplotlib, Agg)::

    python -m vigil.tools.dashboards_render --prometheus http://127.0.0.1:9090 --out docs/dashboards

Grafana template variables are substituted the way Grafana's "All" would: ``$ward``/``$model`` match
everything, ``$__rate_interval`` and ``$__range`` become fixed windows (:func:`substitute`).

>>> substitute('sum(rate(x{ward=~"$ward"}[$__rate_interval]))')
'sum(rate(x{ward=~".*"}[1m]))'
>>> legend("{{ward}} / {{type}}", {"ward": "ICU-MED", "type": "news2_urgent"})
'ICU-MED / news2_urgent'
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vigil.config import REPO_ROOT

__all__ = [
    "DASHBOARDS",
    "RULES",
    "PanelQuery",
    "substitute",
    "legend",
    "panel_queries",
    "variable_queries",
    "rule_exprs",
    "query",
    "query_range",
    "render",
]

DASHBOARDS = REPO_ROOT / "dashboards" / "grafana"
RULES = REPO_ROOT / "dashboards" / "prometheus" / "rules"
_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # file stem
    panel: str  # title
    kind: str  # timeseries | table | ...
    ref: str
    expr: str  # as written in the dashboard
    legend: str
    thresholds: tuple[float, ...] = ()  # the panel's threshold lines (budgets, PSI 0.25, the card's alert rate)

    @property
    def promql(self) -> str:
        return substitute(self.expr)


def substitute(expr: str, rate_interval: str = "1m", rng: str = "1h") -> str:
    """Grafana variables -> PromQL: "All" for ``$name`` / ``${name}``, fixed windows for the built-ins."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", rng)
    for k, v in _VARS.items():
        out = out.replace(k, v)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", out)


def legend(fmt: str, labels: dict[str, str]) -> str:
    text = re.sub(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt or "")
    return text or ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


def _dashboards(root: Path) -> list[Path]:
    return sorted(root.glob("*.json"))


def panel_queries(root: Path = DASHBOARDS) -> list[PanelQuery]:
    """Every target of every panel of every dashboard under ``root``."""
    out: list[PanelQuery] = []
    for path in _dashboards(root):
        for p in json.loads(path.read_text())["panels"]:
            steps = p.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
            lines = tuple(float(st["value"]) for st in steps if st.get("value") is not None)
            for t in p.get("targets", []):
                out.append(PanelQuery(path.stem, p["title"], p.get("type", "timeseries"), t.get("refId", "A"),
                                      t["expr"], t.get("legendFormat", ""), lines))  # fmt: skip
    return out


def variable_queries(root: Path = DASHBOARDS) -> list[tuple[str, str, str]]:
    """(dashboard, variable, PromQL) for each ``label_values(metric, label)`` query variable."""
    out = []
    for path in _dashboards(root):
        for v in json.loads(path.read_text()).get("templating", {}).get("list", []):
            if v.get("type") != "query":
                continue
            q = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
            m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q)
            if not m:
                msg = f"{path.name}: variable {v['name']}: only label_values(metric, label) is supported: {q}"
                raise ValueError(msg)
            out.append((path.stem, v["name"], f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def rule_exprs(root: Path = RULES) -> list[dict[str, Any]]:
    """Every recording and alerting rule (the YAML dicts, with ``file`` and ``group`` added)."""
    out = []
    for path in sorted(root.glob("*.yml")):
        for g in yaml.safe_load(path.read_text())["groups"]:
            for r in g["rules"]:
                out.append({**r, "file": path.name, "group": g["name"]})
    return out


def _get(url: str, path: str, params: dict[str, str]) -> dict[str, Any]:
    full = f"{url.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(full, timeout=10) as r:  # noqa: S310 - a Prometheus URL we were given
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:  # 400/422: PromQL errors come back as JSON
        return json.loads(exc.read())


def query(url: str, promql: str, at: float | None = None) -> dict[str, Any]:
    """``/api/v1/query``: the API's JSON (``status``, ``data``/``error``)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return _get(url, "/api/v1/query", params)


def query_range(url: str, promql: str, start: float, end: float, step: float) -> dict[str, Any]:
    return _get(url, "/api/v1/query_range",
                {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})  # fmt: skip


def _title(stem: str, root: Path) -> str:
    return json.loads((root / f"{stem}.json").read_text()).get("title", stem)


def render(url: str, out_dir: Path, start: float, end: float, step: float = 2.0, root: Path = DASHBOARDS,
           rate_interval: str = "1m") -> list[Path]:  # fmt: skip
    """One PNG per dashboard (``<stem>.png``), a subplot per panel, from ``url`` over ``[start, end]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    by_dash: dict[str, dict[str, list[PanelQuery]]] = {}
    for q in panel_queries(root):
        by_dash.setdefault(q.dashboard, {}).setdefault(q.panel, []).append(q)
    written = []
    for stem, panels in by_dash.items():
        n = len(panels)
        cols = 2
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(14, 3.4 * rows), squeeze=False)
        for ax, (title, qs) in zip(axes.flat, panels.items(), strict=False):
            ax.set_title(title, fontsize=9)
            if qs[0].kind == "table":
                _table(ax, url, qs, end, rate_interval)
                continue
            for q in qs:
                res = query_range(url, substitute(q.expr, rate_interval), start, end, step)
                for s in res.get("data", {}).get("result", []):
                    xs = [float(t) - end for t, _ in s["values"]]
                    ys = [float(v) for _, v in s["values"]]
                    ax.plot(xs, ys, label=legend(q.legend, s["metric"])[:40], linewidth=1.2)
            for y in qs[0].thresholds:
                ax.axhline(y, color="red", linestyle="--", linewidth=0.8, label=f"threshold {y:g}")
            ax.set_xlabel("seconds before the end of the replay", fontsize=7)
            ax.tick_params(labelsize=7)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, loc="upper left")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.suptitle(f"{_title(stem, root)} (live worker under `vigil replay`)", fontsize=11)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _table(ax: Any, url: str, qs: list[PanelQuery], at: float, rate_interval: str) -> None:
    rows: list[list[str]] = []
    cols: list[str] = []
    for q in qs:
        for s in query(url, substitute(q.expr, rate_interval), at).get("data", {}).get("result", []):
            labels = {k: v for k, v in s["metric"].items() if k != "__name__"}
            cols = cols or sorted(labels)
            rows.append([labels.get(c, "") for c in cols] + [f"{float(s['value'][1]):.0f}"])
    ax.axis("off")
    if rows:
        rows.sort(key=lambda r: -float(r[-1]))
        t = ax.table(cellText=rows[:12], colLabels=[*cols, "count"], loc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(7)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "dashboards")
    ap.add_argument("--minutes", type=float, default=10.0, help="how far back to draw")
    a = ap.parse_args(argv)
    end = time.time()
    for p in render(a.prometheus, a.out, end - a.minutes * 60, end):
        print(p)


if __name__ == "__main__":
    main()
