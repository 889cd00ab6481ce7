"""throughput: images/s in steady state (warm-up steps excluded) of the study's pipeline
(ImageDataGenerator.flow, batch 64, Keras' layers, Adam) and of the `train` stage's
(data.make_dataset and network.compile_model at params.yaml's settings), both training the
study's baseline CNN, alternated; medians, their ratio, and the compute ceiling that this
CPU's float32 matmul rate puts on the network.
"""

from __future__ import annotations

import statistics
import time

import keras

from sections.common import StepTimer

STUDY_BATCH = 64
STUDY_NETWORK = dict(architecture="baseline", conv_1_filters=32, conv_2_filters=64,
                     conv_3_filters=None, dense_units=64, dropout=0.0)  # fmt: skip


def study_model():
    """The study's §3.3 network with Keras' own layers, compiled as the study did."""
    from cifar10_mlops.training.model import build_model

    model = build_model(**STUDY_NETWORK)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def study_generator():
    """The study's notebook's augmentation: its ImageDataGenerator settings."""
    from tensorflow.keras.preprocessing.image import ImageDataGenerator  # the study's import

    return ImageDataGenerator(
        rotation_range=15,
        width_shift_range=0.1,
        height_shift_range=0.1,
        shear_range=0.2,
        zoom_range=0.2,
        horizontal_flip=True,
    )


def throughput(data, params, *, images: int, rounds: int, warmup: int = 10) -> dict:
    """Images/s of the study's pipeline and the `train` stage's, both training the study's
    baseline network, alternated `rounds` times on `images` images each; medians."""
    from cifar10_mlops.training.data import make_dataset, steps_per_epoch
    from cifar10_mlops.training.network import compile_model

    x, y = data[0][0][:images], data[0][1][:images]
    # The study's notebook: its generator, batch 64, Keras' BatchNormalization, Adam.
    generator, study = study_generator(), study_model()
    # The train stage's: params.yaml's batch size, augmentation, optimizer and loss, through
    # network.compile_model (fused BatchNormalization), on the same architecture.
    cfg = params.train.model_copy(update=STUDY_NETWORK)
    ours = compile_model(cfg, x)
    dataset = make_dataset(x, y, cfg.batch_size, seed=0, augment=cfg.augment)
    rates = {"study": [], "project": []}

    def timed(batch: int) -> StepTimer:  # at most half of a round's steps are warm-up
        return StepTimer(min(warmup, max(1, len(x) // batch // 2)))

    for round_ in range(rounds):
        timer = timed(STUDY_BATCH)
        flow = generator.flow(x, y, batch_size=STUDY_BATCH, seed=round_)
        study.fit(flow, epochs=1, callbacks=[timer], verbose=0)
        rates["study"].append(timer.rate(STUDY_BATCH))
        timer = timed(cfg.batch_size)
        steps = steps_per_epoch(len(x), cfg.batch_size)
        ours.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
        rates["project"].append(timer.rate(cfg.batch_size))
        print(f"  round {round_ + 1}: study {rates['study'][-1]:,.0f} img/s, project "
              f"{rates['project'][-1]:,.0f} img/s", flush=True)  # fmt: skip
    study_rate, ours_rate = (statistics.median(rates[k]) for k in ("study", "project"))
    return {
        "study_images_per_s": round(study_rate, 1),
        "study_batch": STUDY_BATCH,
        "project_images_per_s": round(ours_rate, 1),
        "project_batch": cfg.batch_size,
        "ratio": round(ours_rate / study_rate, 2),
        "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()},
        "network": "the study's baseline CNN",
        **compute_ceiling(ours, ours_rate),
    }


def compute_ceiling(model, rate: float) -> dict:
    """What limits `model` training at `rate` images/s: its arithmetic against the most this
    CPU multiplies per second."""
    from cifar10_mlops.training.model import forward_mflops

    train_mflops = 3 * forward_mflops(model)  # forward + backward (input and weight gradients)
    peak = matmul_gflops()
    return {
        "train_mflops_per_image": round(train_mflops, 1),
        "project_gflops": round(rate * train_mflops / 1e3, 1),
        "matmul_gflops": round(peak, 1),
        "ceiling_images_per_s": round(peak * 1e3 / train_mflops),
    }


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """float32 GFLOP/s of large matrix products: about the most arithmetic this CPU does."""
    import tensorflow as tf

    a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
    product = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    product().numpy()  # trace, warm the caches
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            product().numpy()
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best
