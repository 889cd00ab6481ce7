"""ablation (not in the default run): the default training with one airbench ingredient
switched off at a time (ABLATIONS, as `ablations` applies them to the default), --seeds seeds
each: final test accuracy, mean and spread, as airbench's README reports them. Needs
data/prepared; about 12 trainings.
"""

from __future__ import annotations

import statistics

from sections.common import AIRBENCH94, AIRBENCH94_MUON, with_train
from sections.time_to_accuracy import time_to_accuracy

# One ingredient off at a time (airbench's ablations); `ablations` leaves out a row that would
# not change the default and adds the swap to the other optimizer's recipe. The last row is
# the port this one replaced: Keras' own Nesterov SGD at airbench94's step size, its decoupled
# weight decay (lr x wd per step) and one rate for all weights.
ABLATIONS = {
    "bias lr x1": {"bias_lr_scale": 1.0},
    "no dirac init": {"dirac_init": False},
    "whitening bias frozen": {"whiten_bias_epochs": 0},
    "random flip": {"alternating_flip": False},
    "no lookahead": {"lookahead": False},
    "no TTA": {"tta_level": 0},
    "mirror TTA only": {"tta_level": 1},
    "Keras SGD, decoupled decay": {"optimizer": "nesterov", "weight_decay": 5e-4},
}
# Where the two airbench recipes' optimizers differ (the batch and width stay the default's).
OPTIMIZER_RECIPE = (
    "optimizer", "learning_rate", "momentum", "weight_decay", "bias_lr_scale",
    "muon_learning_rate", "muon_momentum", "lr_schedule", "warmup_epochs", "lr_start", "lr_end",
    "lookahead", "head",
)  # fmt: skip


def ablations(train) -> dict[str, dict]:
    """ABLATIONS as they apply to `train` (the default): rows that would change nothing are
    left out; with a Muon default, the bias-rate row too (Muon has no one weights' rate) and
    the SGD rows start from airbench94's SGD recipe; "Muon"/"SGD" rows swap the optimizer's
    recipe for the other one's (airbench94's warm-up at its 23 % of the default's epochs)."""
    from cifar10_mlops.training.optimizers import airbench_step_gain

    sgd = {key: AIRBENCH94.get(key, getattr(train, key)) for key in OPTIMIZER_RECIPE}
    sgd["warmup_epochs"] = round(0.23 * train.epochs, 2)
    muon = {key: AIRBENCH94_MUON[key] for key in OPTIMIZER_RECIPE}
    rows = {}
    if train.optimizer == "muon":
        rows["airbench94 SGD, not Muon"] = sgd
    elif train.optimizer == "airbench":
        rows["Muon, not airbench94 SGD"] = muon
    base = sgd if train.optimizer == "muon" else {}
    for name, values in ABLATIONS.items():
        if train.optimizer == "muon" and name == "bias lr x1":
            continue
        if values.get("optimizer") == "nesterov":  # the same Keras step size as airbench's
            rate = base.get("learning_rate", train.learning_rate)
            gain = airbench_step_gain(train.batch_size, base.get("momentum", train.momentum))
            values = {**base, **values, "learning_rate": rate * gain}
        current = {**train.model_dump(), **train.augment.model_dump()}
        if any(current[key] != value for key, value in values.items()):
            rows[name] = values
    return rows


def ablation(data, params, *, seeds: int) -> dict:
    """The default training, then each ABLATIONS entry, `seeds` seeds each: final test
    accuracy with the saved model's test-time augmentation; mean and sample spread. A row
    that changes only `tta_level` is inference only: the default's models, scored so."""
    from cifar10_mlops.core.stage import seed_everything

    rows, defaults = {}, []
    for name, values in {"default": {}, **ablations(params.train)}.items():
        if set(values) == {"tta_level"}:
            accuracies = [
                run["final_test_accuracy_by_tta_level"][str(values["tta_level"])]
                for run in defaults
            ]
            rows[name] = _row(values, accuracies)
            print(f"[ablation] {name}: {accuracies} (the default's models)", flush=True)
            continue
        accuracies = []
        for seed in range(params.seed, params.seed + seeds):
            seed_everything(seed, deterministic=params.deterministic)
            run = with_train(params.model_copy(update={"seed": seed}), **values)
            result = time_to_accuracy(data, run, probe=False)
            defaults += [result] if name == "default" else []
            accuracies.append(result["final_test_accuracy"])
            print(f"[ablation] {name} seed {seed}: {accuracies[-1]:.4f} "
                  f"({result['train_seconds']:.0f} s)", flush=True)  # fmt: skip
        rows[name] = _row(values, accuracies)
    return rows


def _row(changes: dict, accuracies: list[float]) -> dict:
    return {
        "changes": changes,
        "accuracies": accuracies,
        "mean": statistics.fmean(accuracies),
        "std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
    }
