"""leaderboard.html: the leaderboard tables, self-contained (inline CSS and JS, plots embedded as base64 PNG),
with sortable columns. Opens from disk in any browser; needs no network.

Opening it with `#selftest=<column>` in the URL makes it, once the page and its images have loaded, click that
column's header twice and write into the page the resulting row orders (label=sort value), each table's row
and column counts and rendered height, whether each embedded plot decoded (its size, rendered width and share of pixels drawn), and any
script errors (used by the headless-browser test).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
td:nth-child(2), th:nth-child(2), td:last-child { text-align: left; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tr.ref td { color: #555; font-style: italic; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
p.note { max-width: 60em; }
"""

SCRIPT = """
window.kdbenchErrors = [];
window.addEventListener('error', function (e) { window.kdbenchErrors.push(String(e.message)); });
function sortTable(th) {
  var table = th.closest('table'), body = table.tBodies[0];
  var col = Array.prototype.indexOf.call(th.parentNode.children, th);
  var asc = !th.classList.contains('asc');
  Array.prototype.forEach.call(th.parentNode.children, function (h) { h.classList.remove('asc', 'desc'); });
  th.classList.add(asc ? 'asc' : 'desc');
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
    var nx = parseFloat(x), ny = parseFloat(y);
    var cmp;
    if (isNaN(nx) && isNaN(ny)) cmp = x.localeCompare(y);
    else if (isNaN(nx)) return 1; else if (isNaN(ny)) return -1; else cmp = nx - ny;
    return asc ? cmp : -cmp;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('th').forEach(function (th) {
    th.addEventListener('click', function () { sortTable(th); });
  });
});
window.addEventListener('load', function () {  // after the images: the self-test reports whether they loaded
  if (location.hash.indexOf('#selftest') === 0) {
    var wanted = decodeURIComponent(location.hash.slice('#selftest'.length + 1));
    var th = Array.prototype.filter.call(document.querySelectorAll('th[data-sortable]'),
                                         function (h) { return h.textContent === wanted; })[0]
             || document.querySelector('th[data-sortable]');
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var order = function () {
      return Array.prototype.map.call(th.closest('table').tBodies[0].rows, function (r) {
        return r.cells[1].textContent + '=' + r.cells[col].getAttribute('data-sort'); });
    };
    var before = order(); th.click(); var first = order(); th.click(); var second = order();
    var out = document.createElement('pre');
    out.id = 'selftest';
    var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
      return {rows: t.tBodies[0].rows.length, columns: t.tHead.rows[0].cells.length,
              height: t.getBoundingClientRect().height}; });
    var opaque = function (img) {  // the share of the image's pixels drawn (a truncated PNG leaves them empty)
      var c = document.createElement('canvas'), n = 0;
      c.width = img.naturalWidth; c.height = img.naturalHeight;
      var ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      var px = ctx.getImageData(0, 0, c.width, c.height).data;
      for (var i = 3; i < px.length; i += 4) { if (px[i] > 0) n++; }
      return n / (px.length / 4);
    };
    var images = Array.prototype.map.call(document.images, function (img) {
      var ok = img.complete && img.naturalWidth > 0;
      return {alt: img.alt, loaded: ok, width: img.naturalWidth, shown: img.getBoundingClientRect().width,
              drawn: ok ? opaque(img) : 0}; });
    out.textContent = JSON.stringify({column: th.textContent, before: before, first: first, second: second,
                                      tables: tables, images: images, errors: window.kdbenchErrors});
    document.body.appendChild(out);
  }
});
"""


def sort_key(cell: str) -> str:
    """The number a cell sorts by (the mean of 'mean ± std', a delta, a count), or its text."""
    m = _NUMBER.search(cell or "")
    if m:
        return m.group(0).replace(",", "")
    return cell or ""


def _cell_html(column: str, value) -> str:
    """A cell's content: the card column links to the row's model card (cards.py)."""
    if column == "card" and value:
        return f'<a href="{html.escape(str(value))}">card</a>'
    return html.escape(str(value))


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f'<th data-sortable="1">{html.escape(str(c))}</th>' for c in df.columns)
    rows = []
    for _, row in df.iterrows():
        cls = ' class="ref"' if str(row.get("rank")) == "ref" else ""
        cells = "".join(f'<td data-sort="{html.escape(sort_key(str(v)))}">{_cell_html(c, v)}</td>'
                        for c, v in zip(df.columns, row.values))
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def leaderboard_html(tables: list[tuple[str, pd.DataFrame]], suite: str, intro: str, plots: list[Path]) -> str:
    parts = [f"<h1>kdbench leaderboard: {html.escape(suite)}</h1>", f'<p class="note">{html.escape(intro)}</p>']
    for title, df in tables:
        note = df.attrs.get("note")
        parts += [f"<h2>{html.escape(title)}</h2>"] + ([f'<p class="note">{html.escape(note)}</p>'] if note else [])
        parts.append(table_html(df))
        if df.attrs.get("left_out"):  # the seeds whose training failed, shown apart
            parts.append(f'<p class="note">{html.escape(df.attrs["left_out"])}</p>')
    if plots:
        parts.append("<h2>Plots</h2>")
    for p in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        parts.append(f'<h3>{html.escape(Path(p).stem.replace("_", " "))}</h3>'
                     f'<img alt="{html.escape(Path(p).stem)}" src="data:image/png;base64,{data}">')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>kdbench leaderboard: {html.escape(suite)}</title><style>{STYLE}</style>"
            f"<script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>\n")

