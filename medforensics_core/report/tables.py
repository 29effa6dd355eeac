"""Terminal rendering of a report with rich: one table per view, best values in bold green.

Tables never cut a number or drop the detector column: a table wider than the
terminal is split into several stacked tables, each repeating the detector
column with as many metric columns as fit (see :func:`fit_to_width`).
"""

from __future__ import annotations

import dataclasses

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import views

BEST_STYLE = "bold green"
BEST_MARK = "*"  # also marks the best value where colours are lost (logs, NO_COLOR)
FAILED_STYLE = "bold red"
DETECTOR_COLUMN_MAX = 32
DETECTOR_COLUMN_MIN = 20  # names up to this length are never squeezed by a narrow terminal


def print_report(console: Console, report: dict) -> None:
    """Print header, per-detector summaries, metric tables, paired comparisons and perturbation tables."""
    console.rule(f"[bold]mfx report[/bold] - {report.get('protocol') or 'run'}")
    for line in views.banner_lines(report):
        console.print(Text(line, style="bold yellow"))
    for line in views.header_lines(report):
        console.print(Text(line), soft_wrap=False)
    for line in views.detector_summaries(report):
        style = FAILED_STYLE if ": FAILED - " in line else None
        console.print(Text(line, style=style or ""))
    paired = views.paired_table(report)
    for view in views.view_tables(report) + ([paired] if paired else []) + views.perturbation_tables(report):
        for table in fit_to_width(console, view):
            console.print(table)
    for note in report.get("notes") or []:
        console.print(Text(f"note: {note}", style="dim"))


def render_table(view: views.TableView) -> Table:
    """A rich Table for a :class:`views.TableView`; a failed detector is a red FAILED row with its reason."""
    # One space between columns (right padding only): the overall table then fits an 80-column terminal.
    table = Table(title=view.title, box=box.SIMPLE_HEAVY, caption=_caption(view), caption_justify="left",
                  padding=(0, 1, 0, 0), title_justify="left")
    # A failure reason wraps inside the detector column, so it never widens the numeric columns.
    longest = max([len(view.lead_header)] + [len(row.name) for row in view.rows])
    table.add_column(view.lead_header, style="bold", min_width=min(longest, DETECTOR_COLUMN_MIN),
                     max_width=DETECTOR_COLUMN_MAX, overflow="fold")
    if view.line_labels:
        table.add_column("", style="dim", no_wrap=True)
    for column in view.columns:  # group names come from the manifest: shown as text, never as rich markup
        table.add_column(Text(column), justify="right", no_wrap=True)
    for row in view.rows:
        table.add_row(*_rich_row(view, row), end_section=bool(view.line_labels))
    return table


def _wrapped_name(name: str) -> str:
    """A paired comparison's "A vs B" too long for the column breaks before "vs", not inside B's name (a fold
    after "univfd-nn" read as another comparison of the same pair)."""
    return name if len(name) <= DETECTOR_COLUMN_MAX else name.replace(" vs ", "\nvs ", 1)


def _rich_row(view: views.TableView, row: views.Row) -> list[Text | str]:
    if row.failed is not None:
        name = Text(row.name + "\n")
        name.append(f"FAILED: {row.failed}", style=FAILED_STYLE)
        marks = [Text("FAILED", style=FAILED_STYLE)] + [Text("-")] * max(len(view.columns) - 1, 0)
        return [name] + ([""] if view.line_labels else []) + marks
    lead: list[Text | str] = [Text(_wrapped_name(row.name))]
    if view.line_labels:
        lead.append("\n".join(view.line_labels))
    return lead + [_rich_cell(cell) for cell in row.cells]


def _rich_cell(lines: list[views.Line]) -> Text:
    text = Text(justify="right")
    for i, line in enumerate(lines):
        if i:
            text.append("\n")
        if line.best:
            text.append(line.text + BEST_MARK, style=BEST_STYLE)
        elif line.aside:
            text.append(line.text + " ", style="dim")
        else:
            text.append(line.text + " ")
    return text


def _caption(view: views.TableView) -> str | None:
    if not view.mark_meaning and not view.note:
        return None
    return f"{BEST_MARK} {view.mark_meaning}. {view.note}".strip()


def _width(console: Console, table: Table) -> int:
    """The width ``table`` needs unsqueezed (``console.measure`` alone is capped at the console's width)."""
    from rich.measure import Measurement

    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _columns(view: views.TableView, keep: list[int], part: str = "", last: bool = True) -> views.TableView:
    """The same table with only the metric columns ``keep`` (the detector column always stays).

    Only the last part of a split table keeps the caption, so it is printed once.
    """
    rows = [row if row.failed is not None else dataclasses.replace(row, cells=[row.cells[i] for i in keep])
            for row in view.rows]
    return dataclasses.replace(view, title=view.title + part, columns=[view.columns[i] for i in keep], rows=rows,
                               note=view.note if last else "", mark_meaning=view.mark_meaning if last else "")


def fit_to_width(console: Console, view: views.TableView) -> list[Table]:
    """``view`` as one rich table, or as several stacked ones when it is wider than the console.

    Numbers are never wrapped or cut (their columns are ``no_wrap``); instead the metric
    columns are dealt into consecutive tables, each as wide as the console allows and each
    repeating the detector column, so every number still sits beside its detector's name.
    """
    whole = render_table(view)
    if _width(console, whole) <= console.width or len(view.columns) <= 1:
        return [whole]
    groups: list[list[int]] = [[]]
    for index in range(len(view.columns)):
        trial = groups[-1] + [index]
        if groups[-1] and _width(console, render_table(_columns(view, trial))) > console.width:
            groups.append([index])
        else:
            groups[-1] = trial
    if len(groups) == 1:
        return [whole]
    return [render_table(_columns(view, group, f" ({i}/{len(groups)})", last=i == len(groups)))
            for i, group in enumerate(groups, 1)]
