"""MLflow's metric names (core/metric_names.py): grouped by `/`, so the UI draws a section per
group, and nothing Keras logs besides the history's keys slips through."""

from cifar10_mlops.core import metric_names


def test_an_epoch_keeps_keras_history_keys_under_their_groups_only():
    logs = {"loss": 1.2, "accuracy": 0.5, "val_loss": 1.4, "val_accuracy": 0.45,
            "learning_rate": 0.01, "compile_metrics": 3.0}  # fmt: skip
    assert metric_names.epoch(logs) == {
        "train/loss": 1.2, "train/accuracy": 0.5, "val/loss": 1.4, "val/accuracy": 0.45,
        "train/learning_rate": 0.01,
    }  # fmt: skip


def test_test_scores_get_a_section_per_score_and_a_chart_per_class():
    metrics = {"accuracy": 0.9, "loss": 0.5,
               "per_class": {"cat": {"f1": 0.79, "precision": 0.78, "recall": 0.8}}}  # fmt: skip
    assert metric_names.test(metrics) == {
        "test/accuracy": 0.9, "test/loss": 0.5,
        "test/f1/cat": 0.79, "test/precision/cat": 0.78, "test/recall/cat": 0.8,
    }  # fmt: skip


def test_every_name_belongs_to_one_of_five_groups():
    names = [*metric_names.EPOCH.values(), *metric_names.SUMMARY.values(),
             *metric_names.TRIAL.values(), *metric_names.search({"adopted": True}),
             *metric_names.test({"accuracy": 0.9})]  # fmt: skip
    assert {name.split("/")[0] for name in names} == {"train", "val", "test", "trial", "search"}
    assert len(set(names)) == len(names)
    assert metric_names.summary({"best_epoch": 3}) == {"val/best_epoch": 3.0}
