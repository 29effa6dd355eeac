"""DATASET.md: the dataset card written next to every build's manifest.

A benchmark is only as useful as what is known about it: where every real
image came from and under which licence, how many images of each kind each
split holds, and exactly how the fakes were made (settings, training length,
seed), so a reader can judge and reproduce the numbers it produces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..data.manifest import ManifestRow, count_table
from .sources import SOURCES, Source


def _counts_section(rows: Sequence[ManifestRow]) -> list[str]:
    counts = count_table(rows)
    generators = sorted({g for _, _, g in counts}, key=lambda g: (g != "real", g))
    lines = ["| split | modality | " + " | ".join(generators) + " | reals | fakes |",
             "|" + "---|" * (len(generators) + 4)]
    for split in ("train", "val", "test"):
        for modality in sorted({m for s, m, _ in counts if s == split}):
            cells = [counts.get((split, modality, g), 0) for g in generators]
            reals = counts.get((split, modality, "real"), 0)
            lines.append(f"| {split} | {modality} | " + " | ".join(str(c) for c in cells)
                         + f" | {reals} | {sum(cells) - reals} |")
    return lines


def _sources_section(used: Sequence[Source]) -> list[str]:
    lines = ["| modality | package | file | content | licence |", "|---|---|---|---|---|"]
    for s in used:
        lines.append(f"| {s.modality} | {s.distribution} | `{s.relpath}` | {s.description} | {s.licence} |")
    return lines


def _training_section(trained: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| modality | setting | generator (family) | training | steps | loss first -> last | seconds |",
             "|---|---|---|---|---|---|---|"]
    for t in trained:
        first, last = t.get("first_loss"), t.get("last_loss")
        loss = f"{first:.3f} -> {last:.3f}" if first is not None and last is not None else "-"
        steps = t["config"].get("steps", "-")
        lines.append(f"| {t['modality']} | {t['setting']} | {t['generator']} ({t['family']}) | {t['fitted']} "
                     f"| {steps} | {loss} | {t['fit_seconds']} |")
    return lines


def _shortfall(rows: Sequence[ManifestRow], per_modality: int) -> list[str]:
    reals: dict[str, int] = {}
    for r in rows:
        if r.label == 0:
            reals[r.modality] = reals.get(r.modality, 0) + 1
    short = [f"{m} ({n})" for m, n in sorted(reals.items()) if n < per_modality]
    if not short:
        return []
    return ["", f"Modalities with fewer real crops than the target of {per_modality}, because their sources are "
                f"small (non-overlapping tiles only, no duplicated content): {', '.join(short)}."]


def write_card(path: Path, rows: Sequence[ManifestRow], info: dict[str, Any], used: Sequence[Source]) -> Path:
    """Write the dataset card for a finished build."""
    settings = info["settings"]
    lines = [
        "# MedForensics-mini",
        "",
        "An offline benchmark of real and AI-generated medical images, built by `mfx data demo` from sample",
        "images shipped inside installed Python packages and from small generators trained here on a CPU.",
        "It exists so that every mfx command can run, and detectors can be compared, without any download.",
        "It is small and its generators are weak next to the state of the art: use it to test and compare",
        "methods, not to claim clinical-grade detection.",
        "",
        f"- builder: `{info['builder']}`, build key `{info['key']}`, seed {info['seed']}, "
        f"{'quick' if info['quick'] else 'full'} build, crop size {info['size']} px, "
        f"target {info['per_modality']} real crops per modality",
        f"- images: {len(rows)} ({sum(r.label == 0 for r in rows)} real, {sum(r.label == 1 for r in rows)} fake);"
        f" built in {info['seconds']} s",
        "- layout: `<split>/<modality>/<generator>/{0_real,1_fake}/NAME.png`, listed in `manifest.csv` "
        "(path, label, modality, generator, split, source, sha256, params)",
        "",
        "## Real images",
        "",
        "Each source is tiled into non-overlapping crops (grey images replicated to 3 channels); crops that are",
        "mostly background are dropped. Splits are made by region: within an image, contiguous bands of tiles go",
        "to train, val and test; every frame of a cine loop shares its region's split; the brain volume is split",
        "by axial slab and a sagittal/coronal crop is kept only if it lies inside one slab. No test crop overlaps",
        "a training crop. Each crop's package, file, frame/slice and box are in `source` and `params`.",
        "",
        *_sources_section(used),
        *_shortfall(rows, info["per_modality"]),
        "",
        "## Generator settings",
        "",
        "Each split holds as many fakes as reals per modality, dealt to the settings in turn. Image-to-image",
        "fakes are made from real crops of the same split and inherit their `source`; unconditional samples",
        "get the group id `<setting>:<modality>:<split>`. One model is trained per modality on that modality's",
        "training crops; SDEdit and inpainting reuse the modality's diffusion model.",
        "",
        "| setting | generator | config overrides |",
        "|---|---|---|",
        *[f"| {s['name']} | {s['generator']} | `{s['config']}` |" for s in settings],
        "",
        "## Counts",
        "",
        *_counts_section(rows),
        "",
        "## Training",
        "",
        *_training_section(info.get("trained", [])),
    ]
    if info.get("problems"):
        lines += ["", "## Left out (built with --allow-missing)", "", *[f"- {p}" for p in info["problems"]]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["write_card", "SOURCES"]
