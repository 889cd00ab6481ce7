"""Keras Tuner's Hyperband as the `tune` stage runs it (stages/tune/oracle.py): the trials and
epochs a search's settings plan."""

from cifar10_mlops.stages.tune.oracle import BudgetedHyperbandOracle


def test_plan_counts_the_studys_search():
    # Study §4.4: max_epochs 10, factor 3, 2 iterations: 60 trials, 240 epochs.
    oracle = BudgetedHyperbandOracle(
        objective="val_accuracy",
        max_epochs=10,
        factor=3,
        hyperband_iterations=2,
        worker_timeout=900,
    )
    assert oracle.plan() == (60, 240)
