"""The search's reports (stages/tune/report.py), from the records a search leaves in its state
folder: a trial rerun after an interruption is reported by its last run only."""

import csv
import json

from cifar10_mlops.stages.tune.report import (
    TRIALS_FIELDS,
    read_curves,
    trial_workers,
    write_trials_csv,
)


def append(path, *records) -> None:
    with open(path, "a") as fh:
        fh.writelines(json.dumps(record) + "\n" for record in records)


def test_a_rerun_trial_keeps_the_epochs_and_worker_of_its_last_run(tmp_path):
    curves = tmp_path / "curves.jsonl"
    append(curves, {"trial": "0001", "begin": True}, {"trial": "0001", "epoch": 1, "val": 0.2})
    append(curves, {"trial": "0000", "begin": True}, {"trial": "0000", "epoch": 1, "val": 0.3})
    # the search was killed here, resumed, and trial 0001 ran again from its start
    append(curves, {"trial": "0001", "begin": True}, {"trial": "0001", "epoch": 1, "val": 0.4})
    append(curves, {"trial": "0001", "epoch": 2, "val": 0.5})
    assert [(c["trial"], c["epoch"], c["val"]) for c in read_curves(tmp_path)] == [
        ("0000", 1, 0.3), ("0001", 1, 0.4), ("0001", 2, 0.5)
    ]  # fmt: skip
    seconds = tmp_path / "seconds.jsonl"
    append(seconds, {"trial": "0001", "seconds": 3.0, "tuner": "worker-1"})
    append(seconds, {"trial": "0001", "seconds": 2.0, "tuner": "worker-2"})
    assert trial_workers(tmp_path) == {"0001": "worker-2"}


def test_a_state_folder_without_records_reports_no_trials(tmp_path):
    assert read_curves(tmp_path) == [] and trial_workers(tmp_path) == {}
    write_trials_csv([], tmp_path / "trials.csv")
    with open(tmp_path / "trials.csv") as fh:
        reader = csv.DictReader(fh)
        assert list(reader) == [] and tuple(reader.fieldnames) == TRIALS_FIELDS
