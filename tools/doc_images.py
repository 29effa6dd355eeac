"""Refresh the images the quickstart shows, from a real ``mfx compare`` run directory.

Usage (from the repository root, after ``mfx compare dski cnnspot univfd --quick``)::

    python tools/doc_images.py runs/<the run directory>

It copies the run's ROC plot to ``docs/img/quickstart-roc.png`` and takes a
screenshot of its ``report.html`` with headless Chromium into
``docs/img/report-html.png``. Pictures of a real run, never mock-ups: a reader
should see exactly what the command gives them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no chromium on PATH (apt-get install chromium)")


def screenshot(url: str, target: Path, size: str = "1280,1600") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={target}",
                        f"--window-size={size}", url], check=True, capture_output=True, timeout=120)


def main(run_dir: str) -> None:
    run = Path(run_dir).resolve()
    report = run / "report.html"
    if not report.is_file():
        raise SystemExit(f"{report}: not found (is {run} an mfx compare run directory?)")
    DOCS_IMG.mkdir(parents=True, exist_ok=True)
    roc = run / "roc.png"
    if roc.is_file():
        shutil.copy(roc, DOCS_IMG / "quickstart-roc.png")
    screenshot(report.as_uri(), DOCS_IMG / "report-html.png")
    print(f"updated {DOCS_IMG / 'quickstart-roc.png'} and {DOCS_IMG / 'report-html.png'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
