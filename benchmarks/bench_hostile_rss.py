"""Peak RSS of `mfx data check` / `mfx predict` on the memory bombs of issue #15, one process per file.

Each command runs in its own process under an address-space cap (``--cap-gb``, so a bomb that escapes
the guards is stopped instead of taking the machine down); the peak RSS comes from ``wait4``.

    python benchmarks/bench_hostile_rss.py [--cap-gb 10] [--command "data check"]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import hostile_files  # noqa: E402

BOMBS = {
    "3 MB zlib TIFF, 3000 samples/pixel": hostile_files.tiff_many_samples,
    "1.1 MB .nii.gz (800^3 int16)": hostile_files.nifti_gz_bomb,
    "97 KB 10k x 10k PNG": hostile_files.png_bomb,
    "8.7 KB DICOM claiming 2^31-1 frames": hostile_files.dicom_lying_frames,
}


def run_capped(argv: list[str], cap_bytes: int, timeout: float) -> tuple[int, float, float, str]:
    """(exit status, peak RSS in MB, seconds, last stderr line) of one capped process."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=limit)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    # communicate() already reaped the child: its rusage is folded into RUSAGE_CHILDREN (a running max)
    seconds = time.perf_counter() - start
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    return proc.returncode, _child_peak_mb(), seconds, (lines[-1] if lines else "")[:150]


def _child_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cap-gb", type=float, default=10.0)
    parser.add_argument("--command", default="data check", help="mfx sub-command that gets the file")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    cap = int(args.cap_gb * 1024**3)
    with tempfile.TemporaryDirectory() as tmp:
        for label, make in BOMBS.items():
            path = make(Path(tmp))
            # one helper process per file so RUSAGE_CHILDREN is that file's peak alone
            code = ("import sys, resource, subprocess; sys.path.insert(0, %r); from bench_hostile_rss import run_capped;"
                    "print(run_capped(sys.argv[1:], %d, %f))" % (str(Path(__file__).parent), cap, args.timeout))
            argv = [sys.executable, "-c", "from medforensics_core.cli import main; main()", *args.command.split(), str(path)]
            result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
            status, peak, seconds, last = eval(result.stdout.strip())  # noqa: S307 - our own tuple repr
            print(f"{label:40s} {path.stat().st_size / 1e6:7.3f} MB  exit {status:4d}  peak RSS {peak:8.0f} MB  "
                  f"{seconds:6.1f} s  | {last}")
            path.unlink()


if __name__ == "__main__":
    main()
