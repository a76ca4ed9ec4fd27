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


def robust_vs_clean(summary: pd.DataFrame, path: Path, headline_eps: float) -> None:
    e = f"{headline_eps:g}"
    fig, ax = plt.subplots(figsize=(7, 5))
    for (dataset, pair), g in summary.groupby(["dataset", "pair"]):
        for _, r in g.iterrows():
            if f"robust@{e}:mean" not in r or pd.isna(r[f"robust@{e}:mean"]):
                continue
            marker = "*" if r["role"] == "teacher" else "o"
            ax.errorbar(100 * r["clean:mean"], 100 * r[f"robust@{e}:mean"], xerr=100 * r["clean:std"],
                        yerr=100 * r[f"robust@{e}:std"], fmt=marker, capsize=3, ms=9 if marker == "*" else 6,
                        label=f"{r['label']}" + (f" ({pair})" if summary["pair"].nunique() > 1 else ""))
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel(f"worst-case robust accuracy at eps={e} (%)")
    ax.set_title("Robust vs clean accuracy (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    _save(fig, path)


def accuracy_vs_eps(summary: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    for _, r in summary.iterrows():
        cols = _metric_columns(summary, "sweep")
        pts = [(0.0, r["clean:mean"], r["clean:std"])] + [(eps, r[f"{c}:mean"], r[f"{c}:std"]) for eps, c in cols
                                                           if not pd.isna(r.get(f"{c}:mean"))]
        if len(pts) < 2:
            continue
        xs, ys, sd = zip(*pts)
        style = "--" if r["role"] == "teacher" else "-"
        ax.errorbar(xs, [100 * v for v in ys], yerr=[100 * v for v in sd], fmt=style + "o", ms=3, capsize=2,
                    label=r["label"] + (f" ({r['pair']})" if summary["pair"].nunique() > 1 else ""))
    ax.set_xlabel("eps (L-inf, [0, 1] pixel scale)")
    ax.set_ylabel("accuracy under worst of PGD and APGD-DLR (%)")
    ax.set_title("Accuracy vs eps (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
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
