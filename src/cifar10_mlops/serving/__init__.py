"""A registered model in use: pyfunc (the MLflow model `evaluate` logs), server
(`cifar10-mlops serve`: MLflow's scoring app behind limits, with batch, its fast path for
integer pixels, batching, concurrent requests predicted together, metrics at /metrics, and
champion, the alias followed) and predict
(`cifar10-mlops predict`)."""
