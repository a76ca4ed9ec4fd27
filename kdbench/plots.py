"""Plots from the summary table (matplotlib, PNG, no display needed)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .records import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _metric_columns(summary: pd.DataFrame, prefix: str) -> list[tuple[float, str]]:
    found = []
    for col in summary.columns:
        m = re.fullmatch(re.escape(prefix) + r"@([0-9.eE+-]+):mean", col)
        if m:
            found.append((float(m.group(1)), col[: -len(":mean")]))
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
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def robust_vs_clean(summary: pd.DataFrame, path: Path, headline_eps: float) -> None:
    e = f"{headline_eps:g}"
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = _styles(summary)
    for idx, r in summary.iterrows():
        if f"robust@{e}:mean" not in r or pd.isna(r[f"robust@{e}:mean"]):
            continue
        st = styles[idx]
        ax.errorbar(100 * r["clean:mean"], 100 * r[f"robust@{e}:mean"], xerr=100 * r["clean:std"],
                    yerr=100 * r[f"robust@{e}:std"], fmt=st["marker"], ms=st["ms"], color=st["color"], capsize=3,
                    label=st["label"])
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"worst-case robust accuracy, eps = {e} (%)")
    ax.set_title(f"Robust vs clean accuracy (mean ± std over seeds; stars = teachers)")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def accuracy_vs_eps(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles = _styles(summary)
    cols = _metric_columns(summary, "sweep")
    for idx, r in summary.iterrows():
        pts = [(0.0, r["clean:mean"], r["clean:std"])] + [(eps, r[f"{c}:mean"], r[f"{c}:std"]) for eps, c in cols
                                                           if not pd.isna(r.get(f"{c}:mean"))]
        if len(pts) < 2:
            continue
        xs, ys, sd = zip(*pts)
        st = styles[idx]
        ax.errorbar(xs, [100 * v for v in ys], yerr=[100 * v for v in sd], ls=st["ls"], marker="o", ms=3,
                    capsize=2, color=st["color"], label=st["label"])
    ax.set_xlabel("eps (L-inf, [0, 1] pixel scale)")
    ax.set_ylabel("accuracy under the worst of PGD and APGD-DLR (%)")
    ax.set_title("Accuracy vs eps (mean ± std over seeds; dashed = teachers)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    _save(fig, path)


def write_plots(summary: pd.DataFrame, folder: Path, headline_eps: float) -> list[Path]:
    folder = Path(folder)
    written = []
    if summary.empty:
        return written
    for name, fn in (("robust_vs_clean.png", lambda p: robust_vs_clean(summary, p, headline_eps)),
                     ("accuracy_vs_eps.png", lambda p: accuracy_vs_eps(summary, p))):
        fn(folder / name)
        written.append(folder / name)
    return written
