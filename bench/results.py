"""Where the benchmarks put their results: printed, and appended to bench/RESULTS.md as a
section named after the script (each section carries its own device and date)."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def publish(script: str, text: str, write: bool = True) -> None:
    """Print ``text`` and, if ``write``, append it to RESULTS.md under ``## bench/<script>``."""
    print(text)
    if write:
        if not RESULTS.exists():
            RESULTS.write_text("# Benchmark results\n")
        with RESULTS.open("a") as f:
            f.write(f"\n## bench/{script}\n\n" + text)
