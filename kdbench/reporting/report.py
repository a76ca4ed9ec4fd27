"""Records -> summary table (mean ± std over seeds), Markdown leaderboard and plots. A pure function of the
records: reports never train and never evaluate.

Since they are a pure function, `write_reports` keeps a stamp (`.reports.json`) of what it built them from (the
records, the suite name, the headline eps and the source of the reporting code) and a digest of each file it
wrote. When the inputs are the same and every file is intact, it rewrites nothing: drawing the plots is most
of the cost of re-running a finished suite.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from pathlib import Path

import pandas as pd

from ..core.metric_names import at_eps, fmt_number, try_parse
from ..records.store import atomic_write_text, load_records
from ..stats.spread import mean_std
from .cards import CARDS_DIR, build_cards, card_file
from .deltas import baselines_of, delta_columns
from .rows import GROUP, group_key, headline_l2, row_label


def summarize(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, pair, role, method, teacher kind, params): n seeds, mean and std of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    rows = []
    for key, recs in sorted(groups.items()):
        recs = sorted(recs, key=lambda r: r["seed"])
        row = dict(zip(GROUP, key))
        row["label"] = row_label(row["method"], row["teacher_kind"] or None, row["role"])
        row["arch"] = recs[0]["student"]["arch"]
        row["model_params"] = recs[0]["student"]["params"]
        row["seeds"] = len(recs)
        row["seed_list"] = " ".join(str(r["seed"]) for r in recs)
        row["headline_eps"] = recs[0].get("headline_eps")
        flag_counts: dict[str, int] = {}
        for r in recs:
            for f in r["flags"]:
                flag_counts[f] = flag_counts.get(f, 0) + 1
        row["flags"] = " ".join(f"{f}({c}/{len(recs)})" for f, c in sorted(flag_counts.items()))
        row["train_seconds"] = sum(r.get("train_seconds", 0.0) for r in recs) / len(recs)
        row["eval_seconds"] = sum(r.get("eval_seconds", 0.0) for r in recs) / len(recs)
        metric_names = sorted({m for r in recs for m in r["metrics"]})
        for m in metric_names:
            vals = [r["metrics"][m] for r in recs if m in r["metrics"]]
            mean, std = mean_std(vals)
            row[f"{m}:mean"], row[f"{m}:std"] = mean, std
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row, metric: str, digits: int = 1) -> str:
    """'mean ± std' over seeds; the mean alone for one seed (no spread was measured)."""
    mean, std = row.get(f"{metric}:mean"), row.get(f"{metric}:std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if int(row.get("seeds", 0)) < 2:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def leaderboard_tables(summary: pd.DataFrame, headline_eps: float,
                       records: list[dict] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """One ranked table per (dataset, pair): students by robust@headline, then the teachers as references. The
    difference columns pair each student row with its baselines' rows seed by seed (and example by example where
    the `records` keep per-example correctness); the test is named in the table's `attrs["note"]`. External rows
    (`kdbench evaluate`) are ranked in every table of their dataset (in a table of their own where the dataset has
    no students)."""
    by_key: dict[tuple, list[dict]] = {}
    for r in records or []:
        by_key.setdefault(group_key(r), []).append(r)
    e = fmt_number(headline_eps)
    key = at_eps("robust", e) + ":mean"
    out = []
    if summary.empty:
        return out
    student_rows = summary[summary["role"] == "student"]
    externals = summary[summary["role"] == "external"]
    student_rows = pd.concat([student_rows, externals[~externals["dataset"].isin(set(student_rows["dataset"]))]])
    groups = list(student_rows.groupby(["dataset", "pair"], sort=True)) if len(student_rows) else \
        list(summary.groupby(["dataset", "pair"], sort=True))
    for (dataset, pair), g in groups:
        students = pd.concat([g[g["role"] == "student"], externals[externals["dataset"] == dataset]])
        if key in students:
            students = students.sort_values(key, ascending=False, na_position="last")
        teachers = summary[(summary["role"] == "teacher") & (summary["dataset"] == dataset)]
        teachers = teachers[teachers["arch"] == pair.split("->")[0]]
        student_dicts = [r.to_dict() for _, r in students.iterrows()]
        compared = compared_metrics(summary, headline_eps, records or [])
        deltas, note = delta_columns(student_dicts, lambda row: by_key.get(tuple(row[c] for c in GROUP), []),
                                     compared)
        rows = []
        for rank, r in enumerate(student_dicts, start=1):
            rows.append(_table_row(str(rank), r, {c: v[rank - 1] for c, v in deltas.items()}, e, compared))
        for _, r in teachers.iterrows():
            rows.append(_table_row("ref", r.to_dict(), {c: "" for c in deltas}, e, compared))
        table = pd.DataFrame(rows)
        table.attrs["note"] = note
        out.append((f"{dataset}: {pair}", table))
    return out


def compared_metrics(summary: pd.DataFrame, headline_eps: float, records: list[dict]) -> list[tuple[str, str]]:
    """The metrics a table shows with difference columns, as (metric, tag) for deltas.delta_columns: the L-inf
    worst case at the headline eps; where the records have them, the L2 worst case at the L2 headline radius
    (tag "l2"), the certified accuracy (tag "cert"; at the L2 headline radius, else the smallest positive
    certified radius) and the ECE (tag "ece")."""
    out = [(at_eps("robust", headline_eps), "")]
    h2 = headline_l2(records)
    if h2 is not None and at_eps("robust-l2", h2) + ":mean" in summary:
        out.append((at_eps("robust-l2", h2), "l2"))
    certified = sorted(n.eps for n in (try_parse(c.removesuffix(":mean")) for c in summary.columns
                                       if c.startswith("certified-l2@") and c.endswith(":mean")) if n is not None)
    if certified:
        r = h2 if h2 in certified else next((c for c in certified if c > 0), certified[-1])
        out.append((at_eps("certified-l2", r), "cert"))
    if "ece:mean" in summary:
        out.append(("ece", "ece"))
    return out


def _table_row(rank: str, r: dict, deltas: dict, e: str, compared: list[tuple[str, str]]) -> dict:
    def with_deltas(metric, tag):
        return {metric: _cell(r, metric), **{c: v for c, v in deltas.items()
                                             if c.startswith(f"Δ {tag} vs " if tag else "Δ vs ")}}

    robust = [with_deltas(m, t) for m, t in compared if t != "ece"]
    calibration = [with_deltas(m, t) for m, t in compared if t == "ece"]
    return {
        "rank": rank,
        "method": r["label"],
        **{k: v for cells in robust for k, v in cells.items()},
        "clean": _cell(r, "clean"),
        at_eps("pgd", e): _cell(r, at_eps("pgd", e)),
        at_eps("apgd-dlr", e): _cell(r, at_eps("apgd-dlr", e)),
        "mca": _cell(r, "mca"),
        **{k: v for cells in calibration for k, v in cells.items()},
        "params": f"{int(r['model_params']):,}",
        "seeds": int(r["seeds"]),
        "flags": r["flags"] or "",
        "card": card_file(tuple(r[g] for g in GROUP)),
    }


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in df.iterrows():
        cells = [f"[card]({row[c]})" if c == "card" and row[c] else str(row[c]).replace("|", "\\|") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def intro(headline_eps: float) -> str:
    e = fmt_number(headline_eps)
    return (f"Ranked by robust@{e}: per-example worst case over every attack run at eps = {e} (L-inf, [0, 1] "
            "pixel scale). Cells are mean ± std over seeds, in % accuracy (the mean alone for one seed). "
            "'Δ vs <baseline>' is the paired difference in robust accuracy to the baseline rows a method is "
            "compared with (ce: the student without a teacher; at: adversarial training without a teacher), in "
            "points; each table's note names the test. Where the suite has them: robust-l2@<r>, the worst case in "
            "the L2 norm at radius r (the students are trained at the L-inf settings), with 'Δ l2'; "
            "certified-l2@<r>, the certified accuracy of the randomized-smoothing classifier, with 'Δ cert'; and "
            "ece, the expected calibration error on clean data in % (lower is better), with 'Δ ece'. 'ref' rows "
            "are the teachers. Flags: sanity checks that distrust a number (fired on n of the seeds); see the "
            "README.")


def leaderboard_markdown(summary: pd.DataFrame, suite: str, headline_eps: float, records=None) -> str:
    parts = [f"# kdbench leaderboard: {suite}", "", intro(headline_eps), ""]
    for title, table in leaderboard_tables(summary, headline_eps, records):
        parts += [f"## {title}", ""] + ([table.attrs["note"], ""] if table.attrs.get("note") else [])
        parts += [to_markdown(table), ""]
    return "\n".join(parts)


STAMP = ".reports.json"
# what the reports are computed by: a change to any of them rebuilds the reports
REPORT_CODE = ("kdbench.reporting.report", "kdbench.reporting.plots", "kdbench.reporting.html", "kdbench.stats.spread", "kdbench.reporting.deltas",
               "kdbench.stats.paired", "kdbench.reporting.cards", "kdbench.reporting.rows", "kdbench.core.metric_names")


def _inputs_key(records: list[dict], suite: str, headline_eps: float) -> str:
    methods = sorted({r["method"] for r in records})
    h = hashlib.sha256(json.dumps([suite, headline_eps, [baselines_of(m) for m in methods]]).encode())
    for name in REPORT_CODE:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    for r in sorted(records, key=lambda r: str(r.get("job_id"))):
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _built_from(out: Path, key: str) -> list[Path] | None:
    """The plots of the reports under `out` if they were built from inputs with this key and every file they
    wrote is still as written; otherwise None."""
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("key") != key or not isinstance(stamp.get("files"), dict):
        return None
    if not all(_digest(out / rel) == d for rel, d in stamp["files"].items()):
        return None
    return [out / rel for rel in stamp.get("plots", [])]


def write_reports(out: Path, suite: str | None = None, headline_eps: float | None = None,
                  records: list[dict] | None = None) -> dict:
    """Rebuild summary.csv, leaderboard.md, leaderboard.html and plots/ under `out` from its records, unless
    they were built from the same inputs and are intact (see the module docstring); `rebuilt` says which."""
    from . import plots
    from .html import leaderboard_html

    out = Path(out)
    bad = []
    if records is None:
        records, bad = load_records(out)
    if suite is None:
        suite = records[0]["suite"] if records else out.name
    if headline_eps is None:
        eps = [r.get("headline_eps") for r in records if r.get("headline_eps") is not None]
        headline_eps = max(set(eps), key=eps.count) if eps else 0.1
    summary = summarize(records)
    key = _inputs_key(records, suite, headline_eps)
    result = {"records": len(records), "bad": bad, "summary": summary, "headline_eps": headline_eps,
              "record_list": records}
    unchanged = _built_from(out, key)
    if unchanged is not None:
        return {**result, "plots": unchanged, "rebuilt": False}
    (out / STAMP).unlink(missing_ok=True)  # a run killed below leaves no stamp, so the next one rebuilds
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "leaderboard.md", leaderboard_markdown(summary, suite, headline_eps, records))
    written = plots.write_plots(summary, out / "plots", headline_eps, records)
    page = leaderboard_html(leaderboard_tables(summary, headline_eps, records), suite, intro(headline_eps), written)
    atomic_write_text(out / "leaderboard.html", page)
    cards = write_cards(out, records, suite)
    plot_files = [p.relative_to(out).as_posix() for p in written]
    files = ["summary.csv", "leaderboard.md", "leaderboard.html"] + plot_files + cards
    stamp = {"key": key, "plots": plot_files, "files": {rel: _digest(out / rel) for rel in files}}
    atomic_write_text(out / STAMP, json.dumps(stamp, indent=1) + "\n")
    return {**result, "plots": written, "rebuilt": True}


def write_cards(out: Path, records: list[dict], suite: str) -> list[str]:
    """cards/<row>.json for every leaderboard row (cards.py); cards of rows that are gone are removed."""
    cards = build_cards(records, suite)
    for rel, card in cards.items():
        atomic_write_text(out / rel, json.dumps(card, indent=1, sort_keys=True) + "\n")
    for stale in sorted((out / CARDS_DIR).glob("*.json")):
        if f"{CARDS_DIR}/{stale.name}" not in cards:
            stale.unlink()
    return sorted(cards)


def console_table(summary: pd.DataFrame, headline_eps: float, records=None) -> str:
    parts = []
    for title, table in leaderboard_tables(summary, headline_eps, records):
        parts += [title, table.drop(columns=["params", "card"]).to_string(index=False)]
        parts += [table.attrs["note"], ""] if table.attrs.get("note") else [""]
    return "\n".join(parts)
