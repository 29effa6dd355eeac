"""Report files of a run: ``report.json``, ``metrics.csv``, ``report.md``, ``report.html`` and plots.

The HTML page is self-contained (inline CSS, plots as base64 PNG, no script, no external
asset) so it can be mailed or attached to an issue and still read the same.
"""

from __future__ import annotations

import base64
import csv
import html
import re
import io
import os
from pathlib import Path

from ..engine.rundir import RunDir
from ..errors import MfxError
from . import plots, views

METRICS_CSV_COLUMNS = ("detector", "view", "group", "metric", "value", "ci_lo", "ci_hi")
# (key in a detector's entry, view name in metrics.csv, whether the key holds groups or one metric set)
_CSV_VIEWS = (
    ("overall", "overall", False), ("by_modality", "by_modality", True), ("by_generator", "by_generator", True),
    ("by_holdout", "by_holdout", True),
    ("mean_over_modalities", "mean_over_modalities", False), ("mean_over_generators", "mean_over_generators", False),
)
_SINGLE_GROUP = {"overall": "all", "mean_over_modalities": "mean", "mean_over_generators": "mean"}


def write_reports(run_dir: RunDir | str | os.PathLike, report: dict) -> dict[str, Path]:
    """Write every report file into ``run_dir``; returns ``{file name: path}`` of what was written.

    ``roc.png`` needs the run's ``scores.csv``; without it (or with an unreadable one) it is skipped.
    """
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    written = {"report.json": run_dir.write_json("report.json", report)}
    written["metrics.csv"] = run_dir.write_text("metrics.csv", metrics_csv(report))
    figures = {"by_modality.png": plots.by_group_png(report, "by_modality")}
    if plots.has_history(report):
        figures["loss.png"] = plots.loss_png(report)
    scores = plots.read_clean_scores(run_dir.file("scores.csv"))
    if scores:
        figures["roc.png"] = plots.roc_png(scores)
        thresholds = {name: float(entry["threshold"]) for name, entry in views.detectors(report).items()
                      if entry.get("threshold") is not None}
        figures["histograms.png"] = plots.histograms_png(scores, thresholds)
    for name, png in figures.items():
        written[name] = run_dir.write_bytes(name, png)
    written["report.md"] = run_dir.write_text("report.md", markdown_report(report, list(figures)))
    examples = _example_images(run_dir, report)
    written["report.html"] = run_dir.write_text("report.html", html_report(report, figures, examples))
    return written


# --------------------------------------------------------------------------- metrics.csv


def metrics_rows(report: dict) -> list[dict]:
    """Long-format rows (detector, view, group, metric, value, ci_lo, ci_hi) of every number in the report."""
    rows: list[dict] = []
    for name, entry in views.detectors(report).items():
        if views.is_ok(entry):
            rows += _entry_rows(name, entry, prefix="")
    for perturbation, entries in (report.get("perturbations") or {}).items():
        for name, entry in (entries or {}).items():
            if views.is_ok(entry):
                rows += _entry_rows(name, entry, prefix=f"{perturbation}/")
    return rows


def _entry_rows(name: str, entry: dict, prefix: str) -> list[dict]:
    rows = []
    for key, view, grouped in _CSV_VIEWS:
        block = entry.get(key)
        if not block:
            continue
        groups = block.items() if grouped else [(_SINGLE_GROUP[key], block)]
        for group, metrics in groups:
            rows += _metric_rows(name, prefix + view, str(group), metrics)
    return rows


def _metric_rows(name: str, view: str, group: str, metrics: dict) -> list[dict]:
    rows = []
    for metric, value in metrics.items():
        if metric.endswith("_ci") or not (value is None or isinstance(value, (int, float))):
            continue
        ci = metrics.get(f"{metric}_ci") or [None, None]
        rows.append({"detector": name, "view": view, "group": group, "metric": metric,
                     "value": value, "ci_lo": ci[0], "ci_hi": ci[1]})
    return rows


def metrics_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in metrics_rows(report):
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


# --------------------------------------------------------------------------- Markdown


def markdown_report(report: dict, figures: list[str]) -> str:
    """GitHub-flavoured Markdown: header, detector lines, tables (best in bold), figure links."""
    parts = [f"# mfx report: {report.get('protocol') or 'run'}", ""]
    parts += [f"> **{_md_escape(line)}**\n" for line in views.banner_lines(report)]
    parts += [f"- {_md_escape(line)}" for line in views.header_lines(report)] + ["", "## Detectors", ""]
    parts += [f"- {_md_escape(line)}" for line in views.detector_summaries(report)] + [""]
    for table in _all_tables(report):
        parts += _markdown_table(table)
    for figure in figures:
        parts += [f"![{figure}]({figure})", ""]
    parts += _markdown_examples(report)
    notes = report.get("notes") or []
    if notes:
        parts += ["## Notes", ""] + [f"- {_md_escape(n)}" for n in notes] + [""]
    return "\n".join(parts)


def _markdown_examples(report: dict) -> list[str]:
    from ..engine.examples import KINDS

    parts: list[str] = []
    for name, entry in views.detectors(report).items():
        examples = entry.get("examples") or {}
        if not any(examples.values()):
            continue
        parts += [f"## Examples: {_md_escape(name)}", ""]
        for kind, heading in KINDS:
            items = examples.get(kind) or []
            cells = " ".join(f"![{_md_escape(i['path'])} {i['score']:.3f}]({i['overlay']})" for i in items)
            parts += [f"**{heading}**: {cells or 'none'}", ""]
    return parts


def _all_tables(report: dict) -> list[views.TableView]:
    paired = views.paired_table(report)
    return views.view_tables(report) + ([paired] if paired else []) + views.perturbation_tables(report)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")


def _md_escape(text: str) -> str:
    """Untrusted text (paths, names, error messages) shown literally: raw HTML such as ``<script>`` becomes
    entities, Markdown emphasis/link/table characters are backslash-escaped, line breaks become spaces."""
    flat = " ".join(str(text).splitlines())
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def _markdown_cell(lines: list[views.Line]) -> str:
    """Values joined by " / " (best in bold), an aside (CI) in brackets after its value."""
    text = ""
    for line in lines:
        value = _md_escape(line.text)
        if line.aside:
            text += f" ({value})"
        else:
            text += (" / " if text else "") + (f"**{value}**" if line.best else value)
    return text


def _markdown_table(table: views.TableView) -> list[str]:
    title = table.title + (f" - each cell: {' / '.join(table.line_labels)}" if table.line_labels else "")
    header = " | ".join(map(_md_escape, [table.lead_header, *table.columns]))
    lines = [f"## {title}", "", f"| {header} |", "|---|" + "---:|" * len(table.columns)]
    for row in table.rows:
        if row.failed is not None:
            cells = [f"**FAILED**: {_md_escape(row.failed)}"] + [""] * (len(table.columns) - 1)
        else:
            cells = [_markdown_cell(cell) for cell in row.cells]
        lines.append(f"| {_md_escape(row.name)} | " + " | ".join(cells) + " |")
    lines += ["", f"Bold: {table.mark_meaning}. {table.note}".strip(), ""]
    return lines


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1f2328; line-height: 1.45; padding: 0 1rem; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: right; vertical-align: top; }
th { background: #f6f8fa; }
td.name, th.name { text-align: left; font-weight: 600; }
td.labels { text-align: left; color: #656d76; }
.best { font-weight: 700; color: #1a7f37; }
tr.failed td { background: #ffebe9; color: #cf222e; text-align: left; }
.aside { color: #656d76; font-size: .8rem; }
.banner { background: #fff8c5; border: 1px solid #d4a72c; padding: .6rem .9rem; font-weight: 600; margin: .4rem 0; }
table.examples td { text-align: center; vertical-align: top; font-size: .8rem; }
table.examples img { width: 190px; border: 1px solid #d0d7de; }
td.kind { text-align: left; font-weight: 600; width: 9rem; }
.note, .meta { color: #656d76; font-size: .88rem; }
ul.meta { padding-left: 1.2rem; }
figure { display: inline-block; margin: 1rem 1rem 0 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
"""


def _example_images(run_dir: RunDir, report: dict) -> dict[str, bytes]:
    """The example overlays the report names (``examples/...png``) that exist in the run directory."""
    found: dict[str, bytes] = {}
    for entry in views.detectors(report).values():
        for items in (entry.get("examples") or {}).values():
            for item in items:
                relative = item.get("overlay")
                if not relative:
                    continue
                try:
                    path = run_dir.file(relative)
                except MfxError:  # a report naming a path outside its run directory: not embedded
                    continue
                if path.is_file():
                    found[relative] = path.read_bytes()
    return found


def _png_src(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _html_examples(report: dict, images: dict[str, bytes]) -> list[str]:
    """Per detector, a grid: fakes caught, fakes missed, reals flagged, each image with its tile heat map."""
    from ..engine.examples import KINDS

    esc = html.escape
    out: list[str] = []
    for name, entry in views.detectors(report).items():
        examples = entry.get("examples") or {}
        if not any(examples.values()):
            continue
        if not out:
            out += ["<h2>Examples</h2>", '<p class="note">Each image with the heat map of its tile scores (the '
                    "box: the most suspicious tile), at the detector's threshold "
                    f"({esc(views.fmt(entry.get('threshold')))} for {esc(name)}).</p>"]
        out += [f"<h3>{esc(name)}</h3>", '<table class="examples">']
        for kind, heading in KINDS:
            cells = []
            for item in examples.get(kind) or []:
                png = images.get(item.get("overlay", ""))
                image = f'<img alt="{esc(item["path"])}" src="{_png_src(png)}"><br>' if png else ""
                cells.append(f"<td>{image}{esc(item['generator'])} &middot; {item['score']:.3f}<br>"
                             f'<span class="aside">{esc("/".join(Path(item["path"]).parts[-3:]))}</span></td>')
            out.append(f'<tr><td class="kind">{esc(heading)}</td>{"".join(cells) or "<td>none</td>"}</tr>')
        out.append("</table>")
    return out


def html_report(report: dict, figures: dict[str, bytes], examples: dict[str, bytes] | None = None) -> str:
    """One self-contained HTML page (inline CSS, base64 PNG figures, no JavaScript)."""
    esc = html.escape
    title = f"mfx report: {report.get('protocol') or 'run'}"
    body = [f"<h1>{esc(title)}</h1>"]
    body += [f'<div class="banner">{esc(line)}</div>' for line in views.banner_lines(report)]
    body += ['<ul class="meta">']
    body += [f"<li>{esc(line)}</li>" for line in views.header_lines(report)] + ["</ul>", "<h2>Detectors</h2>", "<ul>"]
    body += [f"<li>{esc(line)}</li>" for line in views.detector_summaries(report)] + ["</ul>"]
    for table in _all_tables(report):
        body += _html_table(table)
    if figures:
        body.append("<h2>Figures</h2>")
        for name, png in figures.items():
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(name)}</figcaption></figure>")
    body += _html_examples(report, examples or {})
    notes = report.get("notes") or []
    if notes:
        body += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{esc(str(n))}</li>" for n in notes] + ["</ul>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_table(table: views.TableView) -> list[str]:
    esc = html.escape
    head = f'<th class="name">{esc(table.lead_header)}</th>' + ("<th></th>" if table.line_labels else "")
    head += "".join(f"<th>{esc(c)}</th>" for c in table.columns)
    out = [f"<h2>{esc(table.title)}</h2>", "<table>", f"<tr>{head}</tr>"]
    labels = "<br>".join(esc(x) for x in table.line_labels or [])
    for row in table.rows:
        lead = f'<td class="name">{esc(row.name)}</td>'
        if row.failed is not None:
            span = len(table.columns) + (1 if table.line_labels else 0)
            out.append(f'<tr class="failed">{lead}<td colspan="{span}">FAILED: {esc(row.failed)}</td></tr>')
            continue
        cells = "".join("<td>" + "<br>".join(_html_line(line) for line in cell) + "</td>" for cell in row.cells)
        label_cell = f'<td class="labels">{labels}</td>' if table.line_labels else ""
        out.append(f"<tr>{lead}{label_cell}{cells}</tr>")
    note = f'<p class="note"><span class="best">Green bold</span>: {esc(table.mark_meaning)}. {esc(table.note)}</p>'
    out += ["</table>", note]
    return out


def _html_line(line: views.Line) -> str:
    text = html.escape(line.text)
    if line.aside:
        return f'<span class="aside">{text}</span>'
    return f'<span class="best">{text}</span>' if line.best else text
