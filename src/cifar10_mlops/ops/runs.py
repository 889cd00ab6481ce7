"""Run records: what one `make repro`, `make airbench`, `make study` or `make bench` run
measured, as a small JSON file in reports/runs/ (commit, date, params digest, hardware, each
stage's wall time, test metrics). docs/results.md and README's results block are rendered from
them (`cifar10_mlops.ops.results`).

    python -m cifar10_mlops.ops.runs repro -- dvc repro
    python -m cifar10_mlops.ops.runs airbench -- dvc exp run --temp -n airbench94 -S ...

The command runs with its output passed through; the stages' times are read from DVC's
"Running stage" lines. Its exit code is the recorder's. A run that ran no stage, or failed,
writes no record.

Records are committed files, not MLflow runs: mlruns/ is never committed, so a fresh clone
(and CI) could not render the tables from it, and a record shows in review as a diff.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import yaml

from cifar10_mlops.core import repo
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import text_digest, write_json
from cifar10_mlops.core.settings import PARAMS_FILE

RUNS_DIR = Path("reports/runs")
# The params that decide the model and its test score; the rest (where to register, when to
# retrain, the seed) do not make another configuration.
MODEL_KEYS = ("deterministic", "prepare", "tune", "train")
METRICS_FILE = "reports/metrics.json"
TEST_METRICS = ("accuracy", "f1_weighted", "f1_macro", "loss")
STARTED = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' (?:didn't change|is cached)")


def effective_params(params_file: Path, overrides: list[str]) -> dict:
    """params.yaml with `dvc exp run -S` overrides applied the way DVC applies them."""
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(params_file, copy)
        try:
            apply_overrides(copy, overrides)
        except Exception as exc:  # DVC's InvalidArgumentError: a malformed -S value
            raise PipelineError(f"-S {' '.join(overrides)}: {exc}") from exc
        return yaml.safe_load(copy.read_text())


def params_digest(params: dict) -> str:
    """What identifies a configuration: the digest of its MODEL_KEYS params; seeds of one
    recipe group together."""
    model = {key: params.get(key) for key in MODEL_KEYS}
    return text_digest(json.dumps(model, sort_keys=True))[:12]


def overrides_of(command: list[str]) -> list[str]:
    """The `-S`/`--set-param` values of a `dvc exp run` command."""
    return [value for flag, value in zip(command, command[1:]) if flag in ("-S", "--set-param")]


def experiment_name(command: list[str]) -> str | None:
    """The `-n`/`--name` of a `dvc exp run` command; None for anything else."""
    if "exp" not in command or "run" not in command:
        return None
    names = [value for flag, value in zip(command, command[1:]) if flag in ("-n", "--name")]
    if not names:
        raise PipelineError("a recorded `dvc exp run` needs -n NAME to find its results")
    return names[-1]


def hardware() -> dict:
    """The CPU, its cores, memory and GPUs, without importing TensorFlow."""
    cpu = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    gpus = []
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        listed = subprocess.run(query, capture_output=True, text=True, timeout=30)
        gpus = [line.strip() for line in listed.stdout.splitlines() if line.strip()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "memory_gib": memory, "gpus": gpus}


def software() -> dict:
    """Python's and the training stack's versions."""
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "tensorflow-cpu", "keras"):
        try:
            versions[package.removesuffix("-cpu")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def run_timed(command: list[str]) -> tuple[int, dict, float]:
    """Run `command`, its output passed through line by line; (exit code, {stage: seconds or
    None when skipped}, wall seconds)."""
    stages: dict[str, float | None] = {}
    current, started = None, time.monotonic()
    mark = started
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=repo.dvc_env()
    ) as process:
        for raw in process.stdout:
            sys.stdout.buffer.write(raw)
            sys.stdout.flush()
            line = raw.decode(errors="replace").strip()
            if found := STARTED.match(line) or SKIPPED.match(line):
                now = time.monotonic()
                if current:
                    stages[current] = round(now - mark, 1)
                current, mark = (found[1], now) if found.re is STARTED else (None, now)
                stages.setdefault(found[1], None)
        code = process.wait()
    end = time.monotonic()
    if current:
        stages[current] = round(end - mark, 1)
    return code, stages, round(end - started, 1)


def experiment_file(name: str, path: str) -> str | None:
    """`path` as the DVC experiment `name`, run from HEAD, committed it; None if it did not."""
    try:
        head = repo.git("rev-parse", "HEAD").strip()
        return repo.git("show", f"refs/exps/{head[:2]}/{head[2:]}/{name}:{path}")
    except PipelineError:
        return None


def test_metrics(experiment: str | None) -> dict:
    """The test metrics the run left: the workspace's, or its experiment's commit's."""
    if experiment is None:
        text = Path(METRICS_FILE).read_text() if Path(METRICS_FILE).exists() else None
    else:
        text = experiment_file(experiment, METRICS_FILE)
    if text is None:
        raise PipelineError(f"the run left no {METRICS_FILE}: nothing to record")
    metrics = json.loads(text)
    return {key: metrics[key] for key in TEST_METRICS if key in metrics}


def describe(config: str, command: str, params_file: Path, overrides: list[str]) -> dict:
    """A record's first fields, taken before the run: what ran, from which commit and params,
    on which machine, how loaded."""
    params = effective_params(params_file, overrides)
    return {
        "config": config,
        "command": command,
        "commit": repo.head_commit(),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": params.get("seed"),
        "params_digest": params_digest(params),
        "hardware": hardware(),
        "software": software(),
        "load_before": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def record(config: str, command: list[str], out_dir: Path = RUNS_DIR) -> tuple[int, Path | None]:
    """Run `command` as configuration `config` and write its record; (exit code, record)."""
    experiment = experiment_name(command)
    entry = describe(config, shlex.join(command), PARAMS_FILE, overrides_of(command))
    code, stages, seconds = run_timed(command)
    try:
        if code != 0 or not any(value is not None for value in stages.values()):
            raise PipelineError(f"exit code {code}" if code else "no stage ran")
        metrics = test_metrics(experiment)
    except PipelineError as exc:
        print(f"[runs] no record: {exc}", file=sys.stderr)
        return code, None
    entry |= {"stages": stages, "wall_seconds": seconds, "test": metrics}
    if experiment:
        entry["experiment"] = experiment
    return code, write_record(entry, out_dir)


def write_record(entry: dict, out_dir: Path = RUNS_DIR) -> Path:
    """`entry` as reports/runs/<date>-<config>-s<seed>.json; a second run in the same minute
    gets a numbered name."""
    stem = f"{entry['date'][:16].replace(':', '')}-{entry['config']}-s{entry.get('seed')}"
    path, number = out_dir / f"{stem}.json", 1
    while path.exists():
        number += 1
        path = out_dir / f"{stem}-{number}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, entry)
    print(f"[runs] recorded {path}", flush=True)
    return path


def load_records(folder: Path = RUNS_DIR) -> list[dict]:
    """Every record in `folder`, oldest first; a file that is not a record is a one-line
    error naming it."""
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            entry = json.loads(path.read_text())
            missing = {"config", "date", "params_digest", "test"} - set(entry)
        except (OSError, ValueError) as exc:
            raise PipelineError(f"{path}: not a run record ({exc})") from exc
        if missing or not isinstance(entry["test"], dict) or "accuracy" not in entry["test"]:
            raise PipelineError(f"{path}: not a run record (missing {sorted(missing) or 'test'})")
        bad = [k for k, v in entry["test"].items() if not _is_score(v)]
        if bad or not all(isinstance(entry[k], str) for k in ("config", "date", "params_digest")):
            raise PipelineError(f"{path}: not a run record (a value of the wrong type: {bad})")
        records.append({**entry, "file": path.name})
    # in order of date, then of writing: name-2.json after name.json, name-10 after name-9
    return sorted(records, key=lambda entry: (entry["date"], len(entry["file"]), entry["file"]))


def _is_score(value) -> bool:
    """A finite number, as the tables format it (a hand-edited record may hold anything)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cifar10_mlops.ops.runs",
        description="Run a pipeline command and record what it measured in reports/runs/.",
    )
    parser.add_argument("config", help="the configuration's name: repro, airbench, study, ...")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", args.config):
        parser.error(f"config {args.config!r}: lower-case letters, digits and '-' only")
    if not command:
        parser.error("no command: give it after --")
    try:
        code, _ = record(args.config, command)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # the command had the interrupt too: no record
        sys.exit(130)
    sys.exit(code)


if __name__ == "__main__":
    main()
