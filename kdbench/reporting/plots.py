"""Plots from the summary table (matplotlib, PNG, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..core.metric_names import at_eps, in_family, try_parse  # noqa: E402
from ..records.store import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _bars(means, stds) -> list[list[float]] | None:
    """Error bars of mean ± std (in %) cut at the axis' physical limits: an accuracy is never below 0 or
    above 100 %, so a bar reaching past 100 % would show a value no seed can have. No bar where the std is NaN
    (one seed measures no spread; summarize gives it NaN); None when no point has one."""
    means, stds = [float(m) for m in means], [float(sd) for sd in stds]
    if all(sd != sd for sd in stds):
        return None
    stds = [0.0 if sd != sd else sd for sd in stds]
    return [[min(sd, m) for m, sd in zip(means, stds)], [min(sd, 100.0 - m) for m, sd in zip(means, stds)]]


def _metric_columns(summary: pd.DataFrame, prefix: str) -> list[tuple[float, str]]:
    found = []
    for col in summary.columns:
        name = try_parse(col.removesuffix(":mean")) if col.endswith(":mean") else None
        if name is not None and name.kind == prefix and name.eps is not None and name.part is None:
            found.append((name.eps, col.removesuffix(":mean")))
    return sorted(found)


def _styles(summary: pd.DataFrame) -> dict:
    """A distinct colour per row (tab20), stars and dashes for teachers, labels with the pair only when the
    summary has several student pairs."""
    several = summary.loc[summary["role"] == "student", "pair"].nunique() > 1
    cmap = plt.get_cmap("tab20")
    styles = {}
    for i, (idx, r) in enumerate(summary.iterrows()):
        teacher = r["role"] == "teacher"
        label = r["label"] + (f" ({r['pair']})" if several and not teacher else "")
        styles[idx] = {"color": cmap(i % 20), "marker": "*" if teacher else "o", "ms": 11 if teacher else 6,
                       "ls": "--" if teacher else "-", "label": label}
    return styles


def _legend_outside(ax) -> None:
    if not ax.get_legend_handles_labels()[0]:  # nothing drawn
        return
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def robust_vs_clean(summary: pd.DataFrame, path: Path, headline_eps: float) -> None:
    e = f"{headline_eps:g}"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = _styles(summary)
    robust = at_eps("robust", e)
    for idx, r in summary.iterrows():
        if robust + ":mean" not in r or pd.isna(r[robust + ":mean"]):
            continue
        st = styles[idx]
        ax.errorbar(100 * r["clean:mean"], 100 * r[robust + ":mean"],
                    xerr=_bars([100 * r["clean:mean"]], [100 * r["clean:std"]]),
                    yerr=_bars([100 * r[robust + ":mean"]], [100 * r[robust + ":std"]]),
                    fmt=st["marker"], ms=st["ms"], color=st["color"], capsize=3, label=st["label"])
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"worst-case robust accuracy, eps = {e} (%)")
    ax.set_title("Robust vs clean accuracy (mean ± std over seeds, no bar for one seed; stars = teachers)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def _curves(ax, summary: pd.DataFrame, cols: list) -> None:
    """A line per row through clean accuracy at 0 and the metric columns `cols` ((radius, column) pairs), with
    their spread over seeds."""
    styles = _styles(summary)
    for idx, r in summary.iterrows():
        pts = [(0.0, r["clean:mean"], r["clean:std"])] + [(eps, r[f"{c}:mean"], r[f"{c}:std"]) for eps, c in cols
                                                           if not pd.isna(r.get(f"{c}:mean"))]
        if len(pts) < 2:
            continue
        xs, ys, sd = zip(*pts)
        st = styles[idx]
        ys, sd = [100 * v for v in ys], [100 * v for v in sd]
        ax.errorbar(xs, ys, yerr=_bars(ys, sd), ls=st["ls"], marker="o", ms=3, capsize=2, color=st["color"],
                    label=st["label"])


def accuracy_vs_eps(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cols = _metric_columns(summary, "sweep")
    if not cols:
        ax.text(0.5, 0.5, "no eps sweep in this suite (eval.sweep_eps is empty)", ha="center", va="center",
                transform=ax.transAxes)
    _curves(ax, summary, cols)
    ax.set_xlabel("eps (L-inf, [0, 1] pixel scale)")
    ax.set_ylabel("accuracy under the worst of PGD and APGD-DLR (%)")
    ax.set_title("Accuracy vs eps (mean ± std over seeds; dashed = teachers)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def _corruption_names(summary: pd.DataFrame) -> list[str]:
    names = []
    for col in summary.columns:
        name = try_parse(col.removesuffix(":mean")) if col.endswith(":mean") else None
        if name is not None and name.kind == "corruption" and name.level in ("1", "2", "3", "4", "5") and name.name not in names:
            names.append(name.name)
    return names


def accuracy_vs_severity(summary: pd.DataFrame, path: Path) -> None:
    """One panel per corruption: accuracy (mean ± std over seeds) against severity, a line per row."""
    names = _corruption_names(summary)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False, sharey=True)
    styles = _styles(summary)
    for ax, name in zip(axes.flat, names):
        for idx, r in summary.iterrows():
            sev = [s for s in range(1, 6) if in_family("corruption", name, s) + ":mean" in r
                   and not pd.isna(r[in_family("corruption", name, s) + ":mean"])]
            xs = [0] + sev
            ys = [100 * r["clean:mean"]] + [100 * r[in_family("corruption", name, s) + ":mean"] for s in sev]
            sd = [100 * r["clean:std"]] + [100 * r[in_family("corruption", name, s) + ":std"] for s in sev]
            st = styles[idx]
            ax.errorbar(xs, ys, yerr=_bars(ys, sd), ls=st["ls"], marker="o", ms=3, capsize=2, color=st["color"],
                        label=st["label"])
        ax.set_title(name.replace("_", " "))
        ax.set_xticks(range(0, 6))
        ax.set_xlabel("severity (0 = clean)")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.98), frameon=False)
    fig.suptitle("Accuracy vs corruption severity (CIFAR-10-C constants; mean ± std over seeds)")
    fig.tight_layout()
    _save(fig, path)


def robustness_vs_size(summary: pd.DataFrame, path: Path, headline_eps: float) -> None:
    """Worst-case robust accuracy against student size, a line per method (suites with several students)."""
    e = f"{headline_eps:g}"
    students = summary[summary["role"] == "student"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cmap = plt.get_cmap("tab20")
    for i, (label, g) in enumerate(students.groupby("label", sort=True)):
        g = g.sort_values("model_params")
        mean, std = 100 * g[at_eps("robust", e) + ":mean"], 100 * g[at_eps("robust", e) + ":std"]
        ax.errorbar(g["model_params"], mean, yerr=_bars(mean, std), marker="o", capsize=3, color=cmap(i % 20),
                    label=label)
    ax.set_xscale("log")
    ax.set_xlabel("student parameters (log scale)")
    ax.set_ylabel(f"worst-case robust accuracy, eps = {e} (%)")
    ax.set_title("Robustness vs student size (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def accuracy_vs_l2(summary: pd.DataFrame, path: Path) -> None:
    """The L2 worst case against the L2 radius (mean ± std over seeds), a line per row, clean accuracy at 0."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cols = _metric_columns(summary, "robust-l2")
    _curves(ax, summary, cols)
    ax.set_xlabel("L2 radius ([0, 1] pixel scale)")
    ax.set_ylabel("worst-case robust accuracy in L2 (%)")
    ax.set_title("Accuracy vs L2 radius (students trained at the L-inf settings; mean ± std over seeds)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def headline_rows(summary: pd.DataFrame, headline_eps: float) -> list[str]:
    """The rows of the headline comparison: the baselines every difference column compares with (`ce`, `at`) and
    the student ranked first by robust@headline, in the first (dataset, pair) of the students."""
    students = summary[summary["role"] == "student"]
    if students.empty:
        return []
    dataset, pair = sorted(zip(students["dataset"], students["pair"]))[0]
    g = students[(students["dataset"] == dataset) & (students["pair"] == pair)]
    key = at_eps("robust", headline_eps) + ":mean"
    first = g.sort_values(key, ascending=False)["label"].iloc[0] if key in g else None
    return [lab for lab in ("ce", "at") if lab in set(g["label"])] + ([first] if first not in ("ce", "at", None) else [])


def reliability_diagram(summary: pd.DataFrame, records: list[dict], path: Path, headline_eps: float) -> None:
    """Accuracy against confidence in the 15 equal-width confidence bins of the ECE (calibration.py), pooled over
    each row's seeds, for the rows of the headline comparison; the diagonal is perfect calibration."""
    from ..evaluation.calibration import ece_from_bins
    from .rows import group_key, row_label

    labels = headline_rows(summary, headline_eps)
    pooled: dict[str, list] = {}
    for r in records:
        cal = (r.get("flag_evidence") or {}).get("calibration")
        label = row_label(r["method"], r.get("teacher_kind") or None, r["role"])
        if r["role"] != "student" or not cal or label not in labels or group_key(r)[:2] != _first_pair(summary):
            continue
        acc = pooled.setdefault(label, [[0] * cal["bins"], [0] * cal["bins"], [0.0] * cal["bins"]])
        for i, key in enumerate(("count", "correct", "confidence")):
            acc[i] = [a + b for a, b in zip(acc[i], cal[key])]
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.plot([0, 100], [0, 100], ls=":", color="grey", label="perfect calibration")
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(lab for lab in labels if lab in pooled):
        count, correct, conf = pooled[label]
        pts = [(100 * c / n, 100 * k / n, n) for n, k, c in zip(count, correct, conf) if n]
        xs, ys, ns = zip(*pts)
        ece = 100 * ece_from_bins(count, correct, conf)
        ax.plot(xs, ys, marker="o", color=cmap(i), label=f"{label} (ECE {ece:.1f} %, {sum(count)} predictions)")
    ax.set_xlabel("confidence (mean of the bin, %)")
    ax.set_ylabel("accuracy in the bin (%)")
    ax.set_title("Reliability on clean test data (15 equal-width bins; seeds pooled)")
    ax.set_xlim(0, 101)
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    _save(fig, path)


def _first_pair(summary: pd.DataFrame) -> tuple:
    students = summary[summary["role"] == "student"]
    return sorted(zip(students["dataset"], students["pair"]))[0] if len(students) else ()


def write_plots(summary: pd.DataFrame, folder: Path, headline_eps: float, records: list[dict] | None = None
                ) -> list[Path]:
    folder = Path(folder)
    written = []
    if summary.empty:
        return written
    todo = [("robust_vs_clean.png", lambda p: robust_vs_clean(summary, p, headline_eps)),
            ("accuracy_vs_eps.png", lambda p: accuracy_vs_eps(summary, p))]
    if _metric_columns(summary, "robust-l2"):
        todo.append(("accuracy_vs_l2.png", lambda p: accuracy_vs_l2(summary, p)))
    if records and any((r.get("flag_evidence") or {}).get("calibration") for r in records) \
            and headline_rows(summary, headline_eps):
        todo.append(("reliability.png", lambda p: reliability_diagram(summary, records, p, headline_eps)))
    if _corruption_names(summary):
        todo.append(("accuracy_vs_severity.png", lambda p: accuracy_vs_severity(summary, p)))
    students = summary[summary["role"] == "student"]
    if students["model_params"].nunique() > 1 and at_eps("robust", headline_eps) + ":mean" in summary:
        todo.append(("robustness_vs_size.png", lambda p: robustness_vs_size(summary, p, headline_eps)))
    for name, fn in todo:
        fn(folder / name)
        written.append(folder / name)
    return written
