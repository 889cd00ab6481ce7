"""A registered model in use: pyfunc (the MLflow model `evaluate` logs), server
(`cifar10-mlops serve`, MLflow's scoring app with limits) and predict (`cifar10-mlops
predict`)."""
