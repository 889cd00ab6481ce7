"""Training speed of this project against the study's notebook, measured side by side.

    .venv/bin/python benchmarks/bench.py            # the default sections (SECTIONS)
    .venv/bin/python benchmarks/bench.py --only throughput tracking

Each section is a module of benchmarks/sections/ whose docstring says what it measures and
how: throughput, time_to_accuracy, study_speed, tracking, noop_repro and determinism
(SECTIONS), and ablation and gpu with --ablate and --gpu.

Reads params.yaml (--params; --set changes its train values) and data/prepared (--data),
which time_to_accuracy, study_speed, ablation and gpu need; without it, throughput and
tracking train on random images of CIFAR-10's shape (speed does not depend on pixel values).
Prints the table and writes it with the machine's description to benchmarks/results/
<date>-<host>.json (--out); a run at params.yaml as it stands (no --set) that includes
time_to_accuracy also writes a run record (reports/runs/).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads
HERE = str(Path(__file__).resolve().parent)  # where `sections` is; on sys.path when run
if HERE not in sys.path:  # loaded by path, as the tests load it
    sys.path.insert(0, HERE)

import yaml  # noqa: E402

from cifar10_mlops.core.files import write_json  # noqa: E402
from cifar10_mlops.ops import runs  # noqa: E402
from sections.ablation import ablation  # noqa: E402
from sections.common import ROOT, load_data, with_train  # noqa: E402
from sections.determinism import MODES, determinism, determinism_run  # noqa: E402
from sections.gpu import gpu  # noqa: E402
from sections.noop_repro import noop_repro  # noqa: E402
from sections.study_speed import study_speed  # noqa: E402
from sections.throughput import throughput  # noqa: E402
from sections.time_to_accuracy import time_to_accuracy  # noqa: E402
from sections.tracking import tracking  # noqa: E402

# Re-exported: the Makefile's airbench presets restate them, and tests/test_tune.py checks.
from sections.common import AIRBENCH94, AIRBENCH94_MUON  # noqa: E402, F401

SECTIONS = (
    "throughput", "time_to_accuracy", "study_speed", "tracking", "noop_repro", "determinism",
)  # fmt: skip
EXTRA_SECTIONS = ("ablation", "gpu")
NEEDS_DATA = {"time_to_accuracy", "study_speed", "ablation", "gpu"}  # data/prepared itself
TIMED_LABELS = {"time_to_accuracy": "train", "study_speed": "STUDY_SPEED (32/64/128 x 4)"}


def machine() -> dict:
    """The hardware and software the figures were measured on."""
    import tensorflow as tf

    return {
        **runs.hardware(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        **runs.software(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def table(results: dict) -> str:
    """The printed table: a (name, value) row per figure, the sections in a fixed order."""
    rows = _throughput_rows(results["throughput"]) if "throughput" in results else []
    for section in ("time_to_accuracy", "study_speed", "gpu"):
        t = results.get(section)
        if t is None or "skipped" in t:
            continue
        label = TIMED_LABELS[section] if section in TIMED_LABELS else f"airbench94 on {t['device']}"
        rows += _timed_rows(label, t)
    for section, rows_of in (
        ("ablation", _ablation_rows), ("tracking", _tracking_rows),
        ("determinism", _determinism_rows), ("noop_repro", _noop_repro_rows),
    ):  # fmt: skip
        if section in results:
            rows += rows_of(results[section])
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _throughput_rows(t: dict) -> list[tuple[str, str]]:
    return [
        ("throughput, study (ImageDataGenerator, batch 64)",
         f"{t['study_images_per_s']:,.0f} img/s"),
        (f"throughput, project (tf.data, batch {t['project_batch']})",
         f"{t['project_images_per_s']:,.0f} img/s"),
        ("throughput ratio, project / study", f"{t['ratio']:.2f}x"),
        ("project's arithmetic rate / float32 matmul rate",
         f"{t['project_gflops']:.0f} / {t['matmul_gflops']:.0f} GFLOP/s"),
        ("compute ceiling for this network (matmul rate)",
         f"{t['ceiling_images_per_s']:,} img/s"),
    ]  # fmt: skip


def _timed_rows(label: str, t: dict) -> list[tuple[str, str]]:
    rows = []
    for target, point in t["reached"].items():
        reached = "not reached" if point is None else (
            f"{point['seconds'] / 60:.1f} min (epoch {point['epoch']})")  # fmt: skip
        rows.append((f"{label}: time to test accuracy {target}", reached))
    whole = (f"{t['train_seconds'] / 60:.1f} min / {t['final_test_accuracy']:.4f} / "
             f"{t['final_val_accuracy']:.4f}")  # fmt: skip
    return rows + [(f"{label}: whole time / final test / validation accuracy", whole)]


def _ablation_rows(results: dict) -> list[tuple[str, str]]:
    return [
        (f"ablation: {name} ({len(row['accuracies'])} seeds)",
         f"{row['mean']:.4f}" + ("" if row["std"] is None else f" +- {row['std']:.4f}"))
        for name, row in results.items()
    ]  # fmt: skip


def _tracking_rows(t: dict) -> list[tuple[str, str]]:
    return [("MLflow tracking overhead", f"{t['overhead']:+.1%} ({t['seconds_with']}s vs "
                                         f"{t['seconds_without']}s)")]  # fmt: skip


def _determinism_rows(t: dict) -> list[tuple[str, str]]:
    per, readings, same = t["seconds_per_epoch"], t["readings"], t["same_weights"]
    return [
        ("seconds per epoch (fastest run), deterministic / free",
         f"{per['deterministic']} / {per['free']} s ({t['ratio']:.3f}x)"),
        ("  every reading, deterministic / free",
         f"{readings['deterministic']} / {readings['free']}"),
        ("same weights in every run, deterministic / free",
         f"{same['deterministic']} / {same['free']}"),
    ]  # fmt: skip


def _noop_repro_rows(t: dict) -> list[tuple[str, str]]:
    return [("no-op `dvc repro`", t.get("skipped") or f"{t['seconds']} s")]


def cli_parser() -> argparse.ArgumentParser:
    """bench.py's command line (--determinism-run and --epochs: one determinism training)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS + EXTRA_SECTIONS, default=list(SECTIONS)
    )
    parser.add_argument("--ablate", action="store_true", help="add the ablation table")
    parser.add_argument("--gpu", action="store_true", help="add the airbench94 GPU run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per ablation row")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE",
        help="train values for time_to_accuracy and ablation, e.g. epochs=4 conv_1_filters=32",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, help="JSON file (default: benchmarks/results/...)")
    parser.add_argument(
        "--images", type=int, default=12_800, help="training images per throughput/tracking run"
    )
    parser.add_argument(
        "--repeats", type=int, default=5,
        help="alternated rounds of throughput and tracking (determinism: at most 3)",
    )  # fmt: skip
    parser.add_argument("--determinism-run", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=2, help=argparse.SUPPRESS)
    return parser


def checked_params(cli: argparse.ArgumentParser, args: argparse.Namespace):
    """(params.yaml as loaded, with --set applied); a bad --set value is a usage error."""
    from cifar10_mlops.core.errors import ConfigError
    from cifar10_mlops.core.settings import load_params, replace_checked

    loaded = load_params(args.params)
    try:
        values = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        # Checked as params.yaml's train section is: a wrong type or range is one line, not a
        # traceback. Only `train` runs here, so the other sections need not fit it.
        train = replace_checked(with_train(loaded, **values).train, "train")
    except (ValueError, TypeError, ConfigError) as exc:
        cli.error(f"--set: {exc}")
    return loaded, loaded.model_copy(update={"train": train})


def measure(name: str, args: argparse.Namespace, data, params, loaded) -> dict:
    """One section's results (`loaded`: params.yaml without --set, for study_speed)."""
    images, repeats = args.images, args.repeats
    return {
        "throughput": lambda: throughput(data, params, images=images, rounds=repeats),
        "time_to_accuracy": lambda: time_to_accuracy(data, params),
        "study_speed": lambda: study_speed(data, loaded),
        "tracking": lambda: tracking(data, params, images=images, repeats=repeats),
        "noop_repro": noop_repro,
        "determinism": lambda: determinism(
            data=args.data, params=args.params, overrides=args.set, images=images,
            repeats=min(repeats, 3),
        ),
        "ablation": lambda: ablation(data, params, seeds=args.seeds),
        "gpu": lambda: gpu(data, params),
    }[name]()  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    cli = cli_parser()
    args = cli.parse_args(argv)
    loaded, params = checked_params(cli, args)
    if args.determinism_run:
        run = {"data": args.data, "images": args.images, "epochs": args.epochs}
        determinism_run(params, args.determinism_run, **run)
        return
    sections = args.only + ["ablation"] * args.ablate + ["gpu"] * args.gpu
    data, source = load_data(args.data, args.images)
    needs_data = NEEDS_DATA.intersection(sections)
    if needs_data and source != "prepared":
        cli.error(f"{', '.join(sorted(needs_data))} needs {args.data}: run `dvc repro prepare`")
    # What a run record says about this run (reports/runs/): only a run at params.yaml as it
    # stands measures today's recipe.
    described = runs.describe("bench", shlex.join(["benchmarks/bench.py", *sys.argv[1:]]),
                              args.params, []) if not args.set else None  # fmt: skip
    results, seconds = {}, {}
    for name in dict.fromkeys(sections):
        print(f"[bench] {name} ...", flush=True)
        started = time.monotonic()
        results[name] = measure(name, args, data, params, loaded)
        seconds[name] = round(time.monotonic() - started, 1)
    write_report(results, source, args.out)
    if described and "time_to_accuracy" in results:
        accuracy = results["time_to_accuracy"]["final_test_accuracy"]
        runs.write_record(described | {
            "stages": seconds, "wall_seconds": round(sum(seconds.values()), 1),
            "test": {"accuracy": accuracy}}, ROOT / runs.RUNS_DIR)  # fmt: skip


def write_report(results: dict, source: str, out: Path | None) -> None:
    """Writes the results with the machine's description to `out`, then prints the table."""
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "data": source,
        "results": results,
    }
    out = out or ROOT / "benchmarks" / "results" / (
        f"{report['date'][:10]}-{socket.gethostname()}.json")  # fmt: skip
    write_json(out, report)  # first: the measurements outlast any error in printing them
    print(table(results))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
