"""cifar10-mlops: a reproducible, orchestrated pipeline that trains, tunes, evaluates,
registers and retrains a Keras CNN on CIFAR-10.

The package is laid out by role:

- `stages/`: one module (or, for `tune`, one package) per stage of dvc.yaml, named like it:
  download, prepare, tune, train, evaluate, register. `python -m cifar10_mlops.stages.<stage>`.
- `training/`: the ML code the stages share: the networks, augmentation, input pipeline,
  schedules, optimizers, callbacks, devices, saved weights, and the promotion gate's statistics.
- `serving/`: a registered model in use: the MLflow pyfunc, the HTTP server (its metrics, the
  champion it follows, the images it keeps for the drift test), `predict`.
- `monitoring/`: the drift test of what the served model is asked against the reference
  `evaluate` saves (`cifar10-mlops drift`).
- `ops/`: commands around the pipeline: publish a dataset, checkout and verify a version,
  notifications, work-pool checkouts, the smoke run, offline plots, the settings page.
- `core/`: plumbing every part uses: settings (params.yaml), validation, errors, atomic files,
  MLflow tracking and lineage, git and DVC, server health, the stage entry points' frame.
- `cli.py`: the `cifar10-mlops` command.
"""
