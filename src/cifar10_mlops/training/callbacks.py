"""The callbacks a recipe trains with: the learning-rate log, airbench's lookahead, the
whitening bias's freeze, a stop with an error on a non-finite loss, and the per-epoch MLflow
log."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from cifar10_mlops.core import lineage, metric_names, tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.settings import TrainConfig
from cifar10_mlops.training.model import WHITEN_LAYER


class LearningRateLog(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into each epoch's logs (and so the history),
    as LearningRateScheduler does for the step schedule."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model)


def current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class MlflowEpochLogger(keras.callbacks.Callback):
    """Log each epoch's metrics and learning rate to the active MLflow run, at the epoch's
    number counted from 1."""

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = {**(logs or {}), "learning_rate": current_learning_rate(self.model)}
        run_id = mlflow.active_run().info.run_id
        tracking.log_metrics(run_id, lineage.rounded(metric_names.epoch(logs)), step=epoch + 1)


class Lookahead(keras.callbacks.Callback):
    """airbench's lookahead: every `every` steps a running average of all the float weights
    (BatchNorm statistics included) moves toward them, `avg = decay*avg + (1-decay)*w`, and the
    weights jump to it; training ends on the average. The decay grows as 0.95**every x
    (step/total_steps)**3: no averaging at first, a long memory at the end."""

    def __init__(self, total_steps: int, every: int = 5):
        super().__init__()
        self.total_steps, self.every = total_steps, every

    def on_train_begin(self, logs=None):
        self.step = 0
        weights = [w for w in self.model.weights if "float" in str(w.dtype)]
        self.pairs = [(tf.Variable(w.value, trainable=False), w) for w in weights]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0:
            fraction = min(1.0, self.step / self.total_steps)
            self.pull(0.95**self.every * fraction**3)

    def on_train_end(self, logs=None):
        self.pull(1.0)

    def pull(self, decay: float) -> None:
        for average, weight in self.pairs:
            average.assign(decay * average + (1 - decay) * weight.value)
            weight.assign(average)


class FreezeWhiteningBias(keras.callbacks.Callback):
    """Train the `fast` network's whitening bias for the first `epochs` epochs only (airbench:
    3), then freeze it. Keras fixes the trained variables when it builds the train step, so
    the step is rebuilt once, at the freeze."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        bias = self.model.get_layer(WHITEN_LAYER).bias
        if epoch >= self.epochs and bias.trainable:
            bias.trainable = False
            self.model.make_train_function(force=True)


class Diverged(PipelineError):
    """The training loss became NaN or infinite."""


class StopOnDivergence(keras.callbacks.Callback):
    """Stop at the first step whose loss is not finite, by raising Diverged: unlike Keras'
    TerminateOnNaN, which ends training normally and leaves a NaN model to be saved."""

    epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise Diverged(
                f"training diverged: the loss is {float(loss)} at epoch {self.epoch + 1}, step "
                f"{batch + 1}; nothing was saved. Lower train.learning_rate or check the data"
            )


def training_callbacks(cfg: TrainConfig, total_steps: int | None) -> list[keras.callbacks.Callback]:
    """The callbacks `cfg`'s recipe trains with (the lookahead needs the run's `total_steps`)."""
    callbacks = []
    if cfg.architecture == "fast":
        callbacks.append(FreezeWhiteningBias(cfg.whiten_bias_epochs))
    if cfg.lookahead and total_steps:
        callbacks.append(Lookahead(total_steps))
    return callbacks
