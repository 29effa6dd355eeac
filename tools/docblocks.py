"""Run the tutorials as written: extract the code blocks marked ``<!-- mfx:test -->`` from a docs page.

A tutorial is only worth reading if its commands work, so the tests run them.
The rule for authors: put ``<!-- mfx:test -->`` on the line just before a
```` ```bash ```` or ```` ```python ```` fence and that block becomes part of
the page's test script; unmarked blocks are for reading only (things that need
a GPU, the network, or a pip install the test fixture already did).

All marked blocks of one page run *in order in one bash script* (``set -euo
pipefail``), so a later block sees the files an earlier one made, exactly as a
reader following the page would. Python blocks run through the interpreter
that runs the tests (``python`` on ``PATH`` is that interpreter).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

MARKER = re.compile(
    r"^<!--\s*mfx:test\s*-->[ \t]*\n(?P<indent>[ \t]*)```(?P<lang>bash|python)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
    re.MULTILINE | re.DOTALL)
PY_HEREDOC = "MFX_DOC_PYTHON"


@dataclasses.dataclass(frozen=True)
class Block:
    """One marked code block of a page."""

    lang: str
    code: str
    line: int


def marked_blocks(page: str | os.PathLike) -> list[Block]:
    """The marked blocks of a Markdown page, in order (indented fences inside admonitions included)."""
    text = Path(page).read_text(encoding="utf-8")
    blocks = []
    for match in MARKER.finditer(text):
        indent = match["indent"]
        lines = [line[len(indent):] if line.startswith(indent) else line for line in match["body"].splitlines()]
        blocks.append(Block(match["lang"], "\n".join(lines) + "\n", text.count("\n", 0, match.start()) + 1))
    return blocks


def page_script(page: str | os.PathLike) -> str:
    """One bash script that runs every marked block of ``page`` in order."""
    parts = ["set -euo pipefail"]
    for block in marked_blocks(page):
        parts.append(f"echo '--- {Path(page).name}:{block.line} ({block.lang})' >&2")
        if block.lang == "bash":
            parts.append(block.code)
        else:
            parts.append(f"python - <<'{PY_HEREDOC}'\n{block.code}{PY_HEREDOC}\n")
    return "\n".join(parts) + "\n"


def tutorial_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a reader of the docs has: offline hub, this interpreter's ``python``/``mfx`` first."""
    env = {k: v for k, v in os.environ.items() if k != "MFX_LOAD_PLUGINS"}
    bin_dir = str(Path(sys.executable).parent)
    env.update({"PATH": bin_dir + os.pathsep + env.get("PATH", ""), "HF_HUB_OFFLINE": "1",
                "MFX_ALLOW_DOWNLOAD": "0", "PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    env.update(extra or {})
    return env


def run_page(page: str | os.PathLike, workdir: str | os.PathLike, repo: str | os.PathLike,
             timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a page's marked blocks in ``workdir``, where ``docs`` links to the repository's docs folder.

    Commands in the tutorials are written for the repository root (``pip
    install -e docs/examples/...``); the link lets them work unchanged while
    everything they write (``runs/``, datasets) lands in ``workdir``.
    """
    workdir = Path(workdir)
    link = workdir / "docs"
    if not link.exists():
        link.symlink_to(Path(repo).resolve() / "docs", target_is_directory=True)
    return subprocess.run(["bash", "-c", page_script(page)], cwd=workdir, env=tutorial_env(env),
                          capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":  # print a page's script: python tools/docblocks.py docs/tutorials/quickstart.md
    sys.stdout.write(page_script(sys.argv[1]))
