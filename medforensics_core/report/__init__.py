"""Reports of a run: rich tables in the terminal; JSON, CSV, Markdown, self-contained HTML and plots on disk.

The report dict (``report.json``) is built by the engine; this package only renders it, so
``mfx report RUN_DIR`` can re-render an old run without recomputing anything.
"""

from __future__ import annotations

from .tables import print_report
from .writers import metrics_rows, write_reports

__all__ = ["metrics_rows", "print_report", "write_reports"]
