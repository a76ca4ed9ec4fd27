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
from .current import current
from .deltas import baselines_of, delta_columns
from .rows import GROUP, UNDER_TRAINED_BASELINE, UNDER_TRAINED_GAP, counted, group_key, headline_l2, row_label, \
    under_trained


def summarize(records: list[dict]) -> pd.DataFrame:
    """One row per (dataset, pair, role, method, teacher kind, params): the seeds that count (`rows.counted`:
    not `training-failed`) and the failed ones, the mean and std of each metric over the seeds that count, the
    flags (fired on n of all its seeds), the training epochs and, for a student row more than
    `rows.UNDER_TRAINED_GAP` below `ce` in clean accuracy, `under_trained`."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(group_key(r), []).append(r)
    rows = []
    every_metric = sorted({m for r in records for m in r["metrics"]})  # a column each, NaN in rows without it
    for key, recs in sorted(groups.items()):
        kept, failed = counted(recs)
        row = dict(zip(GROUP, key))
        row["label"] = row_label(row["method"], row["teacher_kind"] or None, row["role"])
        row["arch"] = recs[0]["student"]["arch"]
        row["model_params"] = recs[0]["student"]["params"]
        row["seeds"] = len(kept)
        row["seed_list"] = " ".join(str(r["seed"]) for r in kept)
        row["failed_seeds"] = " ".join(str(r["seed"]) for r in failed)
        row["epochs"] = _epochs(recs)
        row["headline_eps"] = recs[0].get("headline_eps")
        flag_counts: dict[str, int] = {}
        for r in recs:
            for f in r["flags"]:
                flag_counts[f] = flag_counts.get(f, 0) + 1
        row["flags"] = " ".join(f"{f}({c}/{len(recs)})" for f, c in sorted(flag_counts.items()))
        row["under_trained"] = ""
        row["train_seconds"] = sum(r.get("train_seconds", 0.0) for r in recs) / len(recs)
        row["eval_seconds"] = sum(r.get("eval_seconds", 0.0) for r in recs) / len(recs)
        for m in every_metric:  # over the seeds that count: NaN where none has it (every seed failed to train)
            row[f"{m}:mean"], row[f"{m}:std"] = mean_std([r["metrics"][m] for r in kept if m in r["metrics"]])
        rows.append(row)
    for row in rows:  # against the same pair's ce row, over the seeds both have
        if row["role"] != "student" or row["method"] == UNDER_TRAINED_BASELINE:
            continue
        base = [g for g in groups if g[:4] == (row["dataset"], row["pair"], "student", UNDER_TRAINED_BASELINE)]
        if not base:
            continue
        mine, theirs = counted(groups[tuple(row[c] for c in GROUP)])[0], counted(groups[base[0]])[0]
        found = under_trained(mine, theirs)
        if found:  # the means compared, and the seeds they are over where that is not both rows' own seeds
            own = found[2] in (0, len(mine)) and found[2] in (0, len(theirs))
            row["under_trained"] = (f"clean {100 * found[0]:.1f} vs {UNDER_TRAINED_BASELINE} {100 * found[1]:.1f}"
                                    + ("" if own else f" on {found[2]} common seed{'s' if found[2] > 1 else ''}"))
    return pd.DataFrame(rows)


def _epochs(recs: list[dict]) -> str:
    """The training epochs of a row's models (a student's `train.epochs`, a teacher's `teacher_epochs`), as its
    records' configs give them; several values joined by '/'."""
    config = recs[0].get("config") or {}
    if recs[0]["role"] == "external" or (recs[0]["role"] == "teacher" and (config.get("pair") or {}).get("pretrained")):
        return ""  # trained elsewhere: the config's epochs are not its training's
    field = "teacher_epochs" if recs[0]["role"] == "teacher" else "epochs"
    found = sorted({((r.get("config") or {}).get("train") or {}).get(field) for r in recs} - {None})
    return "/".join(str(e) for e in found)


def _cell(row, metric: str, digits: int = 1) -> str:
    """'mean ± std' over seeds; the mean alone for one seed (no spread was measured)."""
    mean, std = row.get(f"{metric}:mean"), row.get(f"{metric}:std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if int(row.get("seeds", 0)) < 2 or std is None or math.isnan(std):
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
    left_out: dict[tuple, list[dict]] = {}  # training-failed seeds: shown apart, out of the means and the tests
    for r in records or []:
        by_key.setdefault(group_key(r), []).append(r)
    for key in list(by_key):
        by_key[key], left_out[key] = counted(by_key[key])
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
        teacher_dicts = [r.to_dict() for _, r in teachers.iterrows()]
        for r in teacher_dicts:
            rows.append(_table_row("ref", r, {c: "" for c in deltas}, e, compared))
        table = pd.DataFrame(rows)
        table.attrs["note"] = note
        failed = [(r["label"], rec) for r in student_dicts + teacher_dicts
                  for rec in left_out.get(tuple(r[c] for c in GROUP), [])]
        table.attrs["left_out"] = _left_out(failed, e)
        out.append((f"{dataset}: {pair}", table))
    return out


def _left_out(failed: list[tuple[str, dict]], e: str) -> str:
    """The line under a table that lists the seeds left out of their rows because their training failed."""
    if not failed:
        return ""
    seeds = "; ".join(f"{label} seed {rec['seed']} (clean {100 * rec['metrics'].get('clean', float('nan')):.1f}, "
                      f"{at_eps('robust', e)} {100 * rec['metrics'].get(at_eps('robust', e), float('nan')):.1f})"
                      for label, rec in failed)
    return (f"Left out of their rows' means and Δ, {len(failed)} seed(s) whose student did not learn "
            f"(training-failed: clean accuracy at chance; the record keeps the evidence): {seeds}.")


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
        "epochs": r.get("epochs", ""),
        "seeds": _seeds(r),
        "flags": " ".join(f for f in (r["flags"], f"under-trained({r['under_trained']})"
                                      if r.get("under_trained") else "") if f),
        "card": card_file(tuple(r[g] for g in GROUP)),
    }


def _seeds(r: dict) -> str:
    """The seeds that count, and how many more failed to train (left out)."""
    failed = r.get("failed_seeds")
    failed = len(failed.split()) if isinstance(failed, str) else 0
    return f"{int(r['seeds'])}" + (f" (+{failed} failed)" if failed else "")


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
            "pixel scale). Cells are mean ± std over the row's seeds, in % accuracy (the mean alone for one "
            "seed). 'Δ vs <baseline>' is the paired difference in robust accuracy to the baseline rows a method is "
            "compared with (ce: the student without a teacher; at: adversarial training without a teacher), in "
            "points, on the seeds both rows have; where those are not all of both rows' seeds, the cell gives "
            "their number and the two rows' means over them. Each table's note names the test. Where the suite has "
            "them: robust-l2@<r>, the worst case in the L2 norm at radius r (the students are trained at the L-inf "
            "settings), with 'Δ l2'; certified-l2@<r>, the certified accuracy of the randomized-smoothing "
            "classifier, with 'Δ cert'; and ece, the expected calibration error on clean data in % (lower is "
            "better), with 'Δ ece'. 'ref' rows are the teachers; 'epochs' is the training budget of a row's "
            "models. A seed whose student did not learn (flag training-failed) is left out of its row's means and "
            "Δ and listed under the table. Flags: sanity checks that distrust a number (fired on n of the seeds); "
            f"under-trained: the row's clean accuracy is more than {100 * UNDER_TRAINED_GAP:g} points below ce's "
            "(over the seeds both have). See the README.")


def leaderboard_markdown(summary: pd.DataFrame, suite: str, headline_eps: float, records=None) -> str:
    parts = [f"# kdbench leaderboard: {suite}", "", intro(headline_eps), ""]
    for title, table in leaderboard_tables(summary, headline_eps, records):
        parts += [f"## {title}", ""] + ([table.attrs["note"], ""] if table.attrs.get("note") else [])
        parts += [to_markdown(table), ""] + ([table.attrs["left_out"], ""] if table.attrs.get("left_out") else [])
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
    """Rebuild summary.csv, leaderboard.md, leaderboard.html and plots/ under `out` from its records (each row's
    newest configuration: current.py; `superseded` lists the others), unless they were built from the same inputs
    and are intact (see the module docstring); `rebuilt` says which."""
    from . import plots
    from .html import leaderboard_html

    out = Path(out)
    bad = []
    if records is None:
        records, bad = load_records(out)
    records, superseded = current(records)
    if suite is None:
        suite = records[0]["suite"] if records else out.name
    if headline_eps is None:
        eps = [r.get("headline_eps") for r in records if r.get("headline_eps") is not None]
        headline_eps = max(set(eps), key=eps.count) if eps else 0.1
    summary = summarize(records)
    key = _inputs_key(records, suite, headline_eps)
    result = {"records": len(records), "bad": bad, "summary": summary, "headline_eps": headline_eps,
              "record_list": records, "superseded": superseded}
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
        parts += [table.attrs["left_out"]] if table.attrs.get("left_out") else []
        parts += [table.attrs["note"], ""] if table.attrs.get("note") else [""]
    return "\n".join(parts)
