"""Does the search's best configuration beat train's own values beyond the search's noise?

After the Hyperband trials, train's values and the best trial's values are each trained once
more at the trial budget (tune.max_epochs on the search's images), from the same seed, the same
initial weights (where the networks match) and the same batches, so that the only difference is
the searched values. Their predictions on the validation split are then compared paired, as the
promotion gate compares two models (gate.py): McNemar's exact test and a bootstrap interval of
the gain in the objective. Every validation image the two disagree on counts as noise unless
the disagreements lean one way, so the run-to-run spread of a training is inside the test.

The best values are adopted only when the interval (at tune.confidence) lies above 0;
otherwise `train` keeps its own values, and best_hparams.json and the search's MLflow run say
so with the numbers behind it.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from cifar10_mlops.training import gate
from cifar10_mlops.core import metric_names
from cifar10_mlops.core.settings import Params
from cifar10_mlops.training.network import compile_model
from cifar10_mlops.training.schedules import scheduled_rate
from cifar10_mlops.training.data import steps_per_epoch
from cifar10_mlops.core.stage import seed_everything
from cifar10_mlops.stages.tune.space import fmt

OBJECTIVE_METRIC = {"val_accuracy": "accuracy", "val_loss": "loss"}


def candidate_predictions(params: Params, search, values: dict) -> np.ndarray:
    """Validation probabilities of `params.train` with `values`, trained as a trial is."""
    tune = params.tune
    cfg = params.train.model_copy(update={**values, "epochs": tune.max_epochs})
    seed_everything(search.seed, deterministic=params.deterministic)
    steps = steps_per_epoch(len(search.labels), cfg.batch_size)
    model = compile_model(cfg, search.images, learning_rate=scheduled_rate(cfg, steps))
    model.fit(**{**search.kwargs, "verbose": 0})
    return model.predict(search.val[0], batch_size=cfg.val_batch_size, verbose=0)


def check(params: Params, search, best: dict) -> dict:
    """Compare train's values with the best trial's (`best`, the searched keys); returns the
    decision: `adopted`, the `reason` in one line and the comparison's numbers."""
    tune = params.tune
    own = {k: getattr(params.train, k) for k in best}
    if all(own[k] == v for k, v in best.items()):
        return {
            "adopted": False,
            "reason": "kept train's values: the best trial is train's own configuration",
            "comparison": None,
        }
    x, y = search.val
    digest = gate.test_digest(x, y)
    print("[tune] noise check: training train's values and the best values at the trial budget")
    theirs = gate.Predictions(y, candidate_predictions(params, search, best), digest)
    ours = gate.Predictions(y, candidate_predictions(params, search, own), digest)
    c = gate.compare(
        theirs, ours, metric=OBJECTIVE_METRIC[tune.objective], confidence=tune.confidence,
        seed=search.seed,
    )  # fmt: skip
    shown = ", ".join(f"{k} {fmt(own[k])} -> {fmt(v)}" for k, v in best.items())
    numbers = (
        f"validation {c.metric} {c.challenger:.4f} vs train's {c.champion:.4f} at "
        f"{tune.max_epochs} epochs, gain {c.gain:+.4f}, {c.confidence:.0%} interval "
        f"[{c.low:+.4f}, {c.high:+.4f}], {c.challenger_only} vs {c.champion_only} images right "
        f"only, McNemar p {c.p_value:.3g}"
    )
    adopted = c.beats(0.0)
    verdict = "adopted the searched values" if adopted else "kept train's values"
    return {"adopted": adopted, "reason": f"{verdict} ({shown}): {numbers}", "comparison": c}


def as_record(decision: dict) -> dict:
    """The decision as best_hparams.json stores it."""
    c = decision["comparison"]
    return {
        "adopted": decision["adopted"],
        "reason": decision["reason"],
        "noise_check": None if c is None else asdict(c),
    }


def log(decision: dict) -> None:
    """The decision on the active MLflow run (the search's): a tag and the numbers."""
    import mlflow

    mlflow.set_tags(
        {
            "decision": "adopted" if decision["adopted"] else "kept train's values",
            "decision_reason": decision["reason"],
        }
    )
    c = decision["comparison"]
    if c is not None:
        mlflow.log_metrics(
            metric_names.search(
                {
                    "noise_check_gain": c.gain,
                    "noise_check_low": c.low,
                    "noise_check_high": c.high,
                    "noise_check_p_value": c.p_value,
                    "noise_check_best_only": c.challenger_only,
                    "noise_check_train_only": c.champion_only,
                }
            )
        )
