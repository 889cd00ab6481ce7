"""The search's reports: trials.csv, searched.csv (each trial's score by searched value, for
`dvc plots`), the per-epoch curves and the two images.

Curves and trial durations are read from the search's state folder (runs.SearchLog appends
them there), so a resumed search reports the trials run before the interruption too.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cifar10_mlops.core.settings import TUNABLE, TrainConfig
from cifar10_mlops.core.files import replacing
from cifar10_mlops.stages.tune.space import fmt, mflops
from cifar10_mlops.core.search_space import OptimizerChoice


TRIALS_FIELDS = (
    "trial",
    "status",
    "bracket",
    "round",
    "initial_epoch",
    "epochs",
    "continues",
    *TUNABLE,
    "mflops",
    "seconds",
    "score",
)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trial_workers(state: Path) -> dict[str, str]:
    """Trial id -> the tuner id (KERASTUNER_TUNER_ID) of the process that last ran it."""
    return {r["trial"]: r.get("tuner", "") for r in _read_jsonl(state / "seconds.jsonl")}


def read_curves(state: Path) -> list[dict]:
    """Per-epoch metrics of every trial; a trial rerun after an interruption keeps only the
    epochs of its last run."""
    curves: dict[str, list[dict]] = {}
    for record in _read_jsonl(state / "curves.jsonl"):
        if record.get("begin"):
            curves[record["trial"]] = []
        else:
            curves.setdefault(record["trial"], []).append(record)
    return [record for trial in sorted(curves) for record in curves[trial]]


def trial_rows(oracle, cfg: TrainConfig, state: Path) -> list[dict]:
    seconds: dict[str, float] = {}
    for record in _read_jsonl(state / "seconds.jsonl"):
        seconds[record["trial"]] = record["seconds"]  # a rerun trial keeps its last duration
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        values = trial.hyperparameters.values
        rows.append(
            {
                "trial": trial_id,
                "status": trial.status,
                "bracket": values.get("tuner/bracket"),
                "round": values.get("tuner/round"),
                "initial_epoch": values.get("tuner/initial_epoch"),
                "epochs": values.get("tuner/epochs"),
                # Hyperband's later rounds train on from an earlier trial's checkpoint.
                "continues": values.get("tuner/trial_id"),
                **{k: values.get(k, getattr(cfg, k)) for k in TUNABLE},
                "mflops": round(mflops(cfg, values), 2),
                "seconds": round(seconds.get(trial_id, float("nan")), 1),
                "score": None if trial.score is None else round(float(trial.score), 4),
            }
        )
    return rows


def write_trials_csv(rows: list[dict], path: Path) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRIALS_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


SEARCHED_FIELDS = ("trial", "parameter", "value", "label", "score")


def searched_rows(rows: list[dict], space: dict) -> list[dict]:
    """One row per scored trial and searched parameter (`space`: stages.tune.space.searched):
    its value, as a number (a choice's position in its list, named in `parameter`) and as
    text, and the trial's score."""
    out = []
    for name, spec in space.items():
        choices = spec.values if isinstance(spec, OptimizerChoice) else None
        shown = (
            name
            if choices is None
            else f"{name} ({', '.join(f'{i}={c}' for i, c in enumerate(choices))})"
        )
        for row in rows:
            if row["score"] is None:
                continue
            value = row[name]
            number = choices.index(value) if choices is not None else value
            out.append({"trial": row["trial"], "parameter": shown, "value": number,
                        "label": fmt(value), "score": row["score"]})  # fmt: skip
    return out


def write_searched_csv(rows: list[dict], path: Path) -> None:
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SEARCHED_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def trial_label(row: dict, searched: list[str]) -> str:
    """`0003: muon_learning_rate 0.21`: a trial and the values searched in it."""
    values = ", ".join(f"{k} {fmt(row[k])}" for k in searched) or "train's values"
    return f"{row['trial']}: {values}"


def plot_trials(
    rows: list[dict], curves: list[dict], objective: str, path: Path, searched: list[str] = ()
) -> None:
    """The study's "combos" figure: the objective per epoch of every trial (epochs counted
    from 1), labelled with its `searched` values, best in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    scored = [r for r in rows if r["score"] is not None]
    best = (max if objective == "val_accuracy" else min)(
        scored, key=lambda r: r["score"], default=None
    )
    by_trial: dict[str, list[tuple[int, float]]] = {}
    for c in curves:
        by_trial.setdefault(c["trial"], []).append((c["epoch"], c[objective]))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for row in rows:
        points = sorted(by_trial.get(row["trial"], []))
        if not points:
            continue
        # A trial that continues another starts from that trial's last point.
        start = [p for p in by_trial.get(row["continues"], []) if p[0] == row["initial_epoch"]]
        points = start[-1:] + points
        label = trial_label(row, list(searched))
        is_best = best is not None and row["trial"] == best["trial"]
        ax.plot(
            *zip(*points),
            marker="o",
            ms=3,
            lw=2.5 if is_best else 1,
            label=label + (" (best)" if is_best else ""),
            zorder=3 if is_best else 2,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective)
    ax.set_title(f"Hyperband trials: {objective} per epoch (best in bold)")
    ax.grid(alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
    elif len(rows) <= 30:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    _save_figure(fig, path)


def plot_table(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["trial", "status", "continues", "epochs", *TUNABLE, "mflops", "seconds", "score"]
    cells = [[fmt(row[c]) if row[c] is not None else "" for c in columns] for row in rows]
    fig, ax = plt.subplots(figsize=(12, 0.6 + 0.25 * (len(rows) + 1)))
    ax.axis("off")
    table = ax.table(cellText=cells or [[""] * len(columns)], colLabels=columns, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
