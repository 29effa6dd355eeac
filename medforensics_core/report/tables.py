"""Terminal rendering of a report with rich: one table per view, best values in bold green."""

from __future__ import annotations

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
    for line in views.header_lines(report):
        console.print(Text(line), soft_wrap=False)
    for line in views.detector_summaries(report):
        style = FAILED_STYLE if ": FAILED - " in line else None
        console.print(Text(line, style=style or ""))
    for table in views.view_tables(report):
        console.print(render_table(table))
    paired = views.paired_table(report)
    if paired is not None:
        console.print(render_table(paired))
    for table in views.perturbation_tables(report):
        console.print(render_table(table))
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
    for column in view.columns:
        table.add_column(column, justify="right", no_wrap=True)
    for row in view.rows:
        table.add_row(*_rich_row(view, row), end_section=bool(view.line_labels))
    return table


def _rich_row(view: views.TableView, row: views.Row) -> list[Text | str]:
    if row.failed is not None:
        name = Text(row.name + "\n")
        name.append(f"FAILED: {row.failed}", style=FAILED_STYLE)
        marks = [Text("FAILED", style=FAILED_STYLE)] + [Text("-")] * max(len(view.columns) - 1, 0)
        return [name] + ([""] if view.line_labels else []) + marks
    lead: list[Text | str] = [row.name]
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


def _caption(view: views.TableView) -> str:
    return f"{BEST_MARK} {view.mark_meaning}. {view.note}".strip()
