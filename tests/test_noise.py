"""The noise check after a search (stages/tune/noise.py): the best trial's values are adopted
only when they beat train's own beyond the noise of the validation images."""

import json
from pathlib import Path

import mlflow
import pytest

from helpers import runs, stage_args, tiny_params, tune_cli, write_prepared


def search_learning_rate(params_file, low: float, high: float, **overrides) -> dict:
    """A tiny search over Adam's learning rate alone; returns best_hparams.json."""
    space = {k: None for k in tiny_params()["tune"]["space"]}
    space["learning_rate"] = {"min": low, "max": high, "sampling": "log"}
    tune_cli(params_file, **{"tune.space": space, **overrides})
    return json.loads(Path("models/best_hparams.json").read_text())


@pytest.mark.extended  # a search of trained trials: 1.5 min
def test_tied_trials_keep_trains_values(in_project, prepared, params_file, capsys):
    """Every trial within 1 % of train's learning rate: whatever trial scores best, the check
    trains both at the trial budget, finds no gain beyond noise and keeps train's values."""
    from cifar10_mlops.stages import train

    best = search_learning_rate(params_file, 0.001, 0.00101)
    assert best["adopted"] is False and best["hyperparameters"] == {}
    check = best["noise_check"]
    if check is None:  # the best trial was train's own configuration
        assert best["reason"] == "kept train's values: the best trial is train's own configuration"
    else:
        assert check["low"] <= 0 <= check["high"] and check["images"] == 50
        assert best["reason"].startswith("kept train's values (learning_rate 0.001 -> ")
        assert f"McNemar p {check['p_value']:.3g}" in best["reason"]
    [parent] = runs(stage="tune")
    assert parent.data.tags["decision"] == "kept train's values"

    capsys.readouterr()
    train.main(["--params", str(params_file()), *stage_args("train")])
    assert "training with the params.yaml train values: the search kept train's values" in (
        capsys.readouterr().out
    )
    run = mlflow.get_run(json.loads(Path("models/run.json").read_text())["run_id"])
    assert run.data.tags["hparams_source"] == "params"
    assert run.data.params["train.learning_rate"] == "0.001"


@pytest.mark.extended  # a search of trained trials: 2 min
def test_a_clearly_better_value_is_adopted(in_project, params_file):
    """train's learning rate mis-set to 1e-7 (nothing is learnt in two epochs): the search's
    rates learn, and the check adopts them with the numbers behind it. On 60 images per class
    (150 for validation): at 20 per class, two epochs of 9 steps leave the gain inside the
    noise of 50 validation images, and the check rightly keeps train's values."""
    write_prepared(in_project / "data" / "prepared", per_class=60)
    best = search_learning_rate(
        params_file, 0.003, 0.01, **{"train.learning_rate": 1e-7, "train.weight_decay": 0.0}
    )
    check = best["noise_check"]
    assert best["adopted"] is True, best["reason"]
    assert best["hyperparameters"] == best["best_trial_values"]
    assert 0.003 <= best["hyperparameters"]["learning_rate"] <= 0.01
    assert check["low"] > 0 and check["challenger_only"] > check["champion_only"]
    assert best["reason"].startswith("adopted the searched values (learning_rate 1e-07 -> ")
    [parent] = runs(stage="tune")
    assert parent.data.metrics["search/noise_check_low"] == pytest.approx(check["low"])
