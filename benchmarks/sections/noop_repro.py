"""noop_repro: `dvc repro` with nothing to do, in this checkout, median of a few runs;
skipped unless `dvc status` says the pipeline is up to date.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from sections.common import ROOT


def noop_repro(repeats: int = 3) -> dict:
    """`dvc repro` with nothing to do; skipped unless the pipeline is up to date."""
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run([*dvc, "status"], cwd=ROOT, capture_output=True, text=True)
    if "Data and pipelines are up to date" not in status.stdout:
        return {"skipped": "the pipeline is not up to date here: run `make repro` first"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*dvc, "repro"], cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return {"seconds": round(statistics.median(times), 2), "runs": repeats}
