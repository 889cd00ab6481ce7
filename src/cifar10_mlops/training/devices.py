"""Where training runs: every GPU when there are any, else the CPU, with the same code.

- GPUs: memory growth on (TensorFlow otherwise reserves every GPU's whole memory at start),
  mixed precision float16 where `train.precision` allows it, and MirroredStrategy over all of
  them when there are several (one replica per GPU, each batch split between them).
- No GPU: the CPU, in float32, under TensorFlow's default strategy.
- CIFAR10_CPU_REPLICAS=N splits the CPU into N logical devices under MirroredStrategy: the
  multi-GPU code path, on a machine without GPUs (the tests use it).

setup() must run before TensorFlow executes its first operation, as device settings are fixed
from then on; every stage that trains calls it first.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cifar10_mlops.core.errors import ConfigError

CPU_REPLICAS_ENV = "CIFAR10_CPU_REPLICAS"
MAX_CPU_REPLICAS = 64  # logical devices for testing the multi-device path; each costs memory
# float16 tensor cores arrived with Volta; older GPUs run mixed_float16 slower than float32.
MIN_FLOAT16_CAPABILITY = (7, 0)


@dataclass(frozen=True)
class Placement:
    strategy: object  # tf.distribute.Strategy
    devices: tuple[str, ...]
    precision: str  # the Keras dtype policy the model computes in

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    def describe(self) -> str:
        kind = type(self.strategy).__name__
        return f"{kind} over {', '.join(self.devices)}; {self.precision} compute"

    def tags(self) -> dict[str, str]:
        """What an MLflow run records about where it trained."""
        return {
            "devices": ",".join(self.devices),
            "replicas": str(self.replicas),
            "precision": self.precision,
        }


def cpu_replicas() -> int:
    raw = os.environ.get(CPU_REPLICAS_ENV, "").strip()
    if not raw:
        return 1
    if not re.fullmatch(r"[0-9]{1,3}", raw) or not 1 <= int(raw) <= MAX_CPU_REPLICAS:
        raise ConfigError(
            f"{CPU_REPLICAS_ENV}: expected a whole number from 1 to {MAX_CPU_REPLICAS}, got {raw!r}"
        )
    return int(raw)


def setup(precision: str) -> Placement:
    """Configure TensorFlow's devices and Keras' dtype policy; return where training runs.

    precision: params.yaml `train.precision`: "auto" (mixed_float16 on GPUs of compute
    capability 7.0 or newer, float32 otherwise) or a Keras dtype policy name, used as given.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    replicas = 1 if gpus else cpu_replicas()
    if replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    devices = tuple(d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU"))

    if precision == "auto":
        precision = "mixed_float16" if gpus and all(map(_float16_capable, gpus)) else "float32"
    keras.config.set_dtype_policy(precision)

    if len(devices) > 1:
        strategy = tf.distribute.MirroredStrategy(list(devices))
    else:
        strategy = tf.distribute.get_strategy()
    return Placement(strategy, devices, precision)


def _float16_capable(gpu) -> bool:
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(gpu)
    return tuple(details.get("compute_capability", (0, 0))) >= MIN_FLOAT16_CAPABILITY
