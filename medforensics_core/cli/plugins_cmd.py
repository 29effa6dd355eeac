"""``mfx plugins``: what is installed, from which distribution, and what failed to load."""

from __future__ import annotations

import dataclasses
import json

import click
from rich.markup import escape
from rich.table import Table

from . import cli, console


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--kind", type=click.Choice(["detector", "noise_extractor", "retriever", "generator", "perturbation"]),
              help="Only this kind of plugin.")
def plugins_command(as_json: bool, kind: str | None) -> None:
    """List registered detectors, noise extractors, retrievers, generators and perturbations.

    Plugins are found through the ``mfx`` entry-point group (``pip install`` a
    plugin and it appears here). Set MFX_LOAD_PLUGINS=dist1,dist2 to load only
    those distributions (an empty value loads none). Plugins that failed to load
    are listed with the reason; the others keep working. ``--json`` adds each
    detector's declared capabilities (``reference-bank``, ``distributed``).

    \b
    Examples:
      mfx plugins --kind detector
      MFX_LOAD_PLUGINS=mfx-example-detector mfx plugins --json
    """
    from ..plugins import get_registry, plugin_rows

    cli.plugin_commands_loaded()  # so a plugin whose register_commands fails is listed below
    registry = get_registry()
    rows = [r for r in plugin_rows(registry) if kind is None or r["kind"] == kind]
    problems = [{"plugin": p.plugin, "distribution": p.distribution, "reason": p.reason} for p in registry.problems]
    if as_json:
        loaded = [{"plugin": p.name, "distribution": p.distribution, "version": p.version, "hooks": p.hooks}
                  for p in registry.plugins]
        refused = [dataclasses.asdict(r) for r in registry.refused]
        click.echo(json.dumps({"registered": rows, "plugins": loaded, "problems": problems, "refused": refused},
                              indent=2))
        return
    table = Table(title="mfx plugins", show_lines=False)
    for column in ("kind", "name", "description", "presets", "distribution"):
        table.add_column(column, overflow="fold")
    for r in rows:
        cells = (r["kind"].replace("_", " "), r["name"], r["description"], ", ".join(r["presets"]), r["distribution"])
        table.add_row(*(escape(str(cell)) for cell in cells))  # plugin metadata is untrusted text
    console.print(table)
    if registry.refused:
        refused = Table(title="refused: names owned by another distribution", show_lines=False)
        for column in ("kind", "name", "claimed by", "owned by"):
            refused.add_column(column, overflow="fold")
        for r in registry.refused:
            refused.add_row(*(escape(cell) for cell in (r.kind.replace("_", " "), r.name,
                                                         f"{r.distribution} ({r.plugin})", r.owner)))
        console.print(refused)
    for p in problems:
        console.print(f"[yellow]problem[/] {escape(p['plugin'])} ({escape(p['distribution'])}): {escape(p['reason'])}",
                      markup=True)
