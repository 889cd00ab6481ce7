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


# What a one-worker search and a search on several slots get from the oracle
# (pool_search.PoolSearch asks only when BudgetedHyperbandOracle.may_ask): the real
# keras-tuner Hyperband, each trial's result a function of its values, no training.


def trials_of(folder, max_epochs, factor, slots, fate, order, iterations=1):
    """Run a search to its end with `slots` at once; `fate(trial_id, attempt)` is COMPLETED,
    FAILED or INVALID (its worker lost), `order(n)` picks which of n running trials ends
    next. Returns each trial's values, status and continuation, by trial id."""
    import json
    import zlib

    import keras_tuner as kt

    space = kt.HyperParameters()
    space.Int("units", 1, 10_000)
    space.Choice("optimizer", ["adam", "sgd", "muon"])
    oracle = BudgetedHyperbandOracle(
        objective=kt.Objective("score", "max"), max_epochs=max_epochs, factor=factor,
        hyperband_iterations=iterations, seed=7, hyperparameters=space, worker_timeout=1e9,
        max_consecutive_failed_trials=1_000, max_retries_per_trial=1,
    )  # fmt: skip
    oracle._set_project_dir(str(folder), f"s{slots}")
    running, attempts, ended = [], {}, False
    while True:
        for slot in (f"slot-{i}" for i in range(slots)):
            if slot in {s for s, _ in running} or not oracle.may_ask(bool(running), ended):
                continue
            trial = oracle.create_trial(slot)
            if trial.status == "RUNNING":
                running.append((slot, trial))
            else:
                ended = True
        if not running:
            break
        slot, trial = running.pop(order(len(running)))
        attempts[trial.trial_id] = attempts.get(trial.trial_id, 0) + 1
        trial.status = fate(trial.trial_id, attempts[trial.trial_id])
        if trial.status == "COMPLETED":
            values = trial.hyperparameters.values
            own = json.dumps({k: values[k] for k in ("units", "optimizer")}, sort_keys=True)
            score = (zlib.crc32(own.encode()) % 997) / 997 + values.get("tuner/epochs", 0) / 100
            oracle.update_trial(trial.trial_id, {"score": score}, step=0)
        oracle.end_trial(trial)
    return {t.trial_id: (t.hyperparameters.values, t.status) for t in oracle.trials.values()}


def test_several_slots_run_the_trials_of_one_whatever_the_order_they_end_in(tmp_path):
    """Property: for Hyperband settings, trials lost (rerun once) or failed, 2-4 slots and
    any order of ending, the trials (values, epochs, the trial each continues, status) are
    those of one slot."""
    import random

    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        max_epochs=st.integers(2, 9), factor=st.integers(2, 4), slots=st.integers(2, 4),
        lost=st.sets(st.integers(0, 12), max_size=3),
        failed=st.sets(st.integers(0, 12), max_size=2), seed=st.integers(0, 2**16),
    )  # fmt: skip
    def check(max_epochs, factor, slots, lost, failed, seed):
        def fate(trial_id, attempt):
            if int(trial_id) in failed:
                return "FAILED"
            return "INVALID" if int(trial_id) in lost and attempt == 1 else "COMPLETED"

        chooser = random.Random(seed)
        folder = tmp_path / f"{max_epochs}-{factor}-{slots}-{seed}-{len(lost)}-{len(failed)}"
        one = trials_of(folder, max_epochs, factor, 1, fate, lambda n: 0)
        many = trials_of(folder, max_epochs, factor, slots, fate, chooser.randrange)
        assert many == one

    check()


def test_without_the_rule_two_slots_run_other_trials(tmp_path, monkeypatch):
    """The property above fails when the search asks whenever a slot is free."""
    monkeypatch.setattr(BudgetedHyperbandOracle, "may_ask", lambda self, running, ended: True)

    def fate(trial_id, attempt):
        return "COMPLETED"

    one = trials_of(tmp_path / "a", 9, 3, 1, fate, lambda n: 0)
    many = trials_of(tmp_path / "b", 9, 3, 3, fate, lambda n: n - 1)  # newest ends first
    assert many != one
