"""Stage `tune`: a Keras Tuner Hyperband search over params.yaml `tune.space` (study §4.4).

`python -m cifar10_mlops.stages.tune` (__main__.py) runs the stage. Its parts, one module each:
space.py (the searched values and the hypermodel), oracle.py (Hyperband with a first trial, a
cost cap and lost-worker handling), runs.py (the MLflow runs), report.py (trials.csv and the
images), trials.py (devices, seed and data for any process running trials), search.py (the
stage's search), noise.py (is the best trial better than train's values beyond noise?) and
distributed.py (Keras Tuner's chief/worker mode), pool_search.py and pool_trial.py (the
search with each trial a flow run on a Prefect work pool: flows/search.py, flows/trial.py).
The training code it shares with `train` is cifar10_mlops.training; it never imports the
train stage.

Reads  data/prepared/{train,val}.npz and manifest.json (from `prepare`); params.yaml `tune`,
       `seed`, `mlflow` and the parts of `train` that define the network (architecture,
       dropout, batch sizes, augment) and the first trial (the searched entries' values).
Writes models/best_hparams.json (the searched values `train` then uses),
       reports/tune/trials.csv (one row per trial), reports/tune/summary.json (metrics),
       reports/tune/trials.png (objective per epoch of every trial: the study's "combos" plot)
       and reports/tune/trials_table.png.
State  --state DIR holds keras-tuner's trials and checkpoints while a search runs: a killed
       search continues from its finished trials when the stage reruns with the same settings.
       The folder is removed once the search completes.
MLflow one parent run per attempt (search space and Hyperband settings as params; the best
       values, the trials table and both images at the end) and a nested run per trial.
Trials are scored on the validation split; the test set is never read here.

Distributed search, with Keras Tuner's own environment variables: the stage run with
KERASTUNER_TUNER_ID=chief, KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT serves the oracle
and trains nothing; workers, `python -m cifar10_mlops.stages.tune --worker --data ... --state
...` with a unique KERASTUNER_TUNER_ID each, run the trials. All share the --state folder
(trial checkpoints, and search.json, which gives workers the chief's params and MLflow run) and
one MLflow tracking server. An empty KERASTUNER_ORACLE_IP means a search in this process. The
oracle has no authentication: the chief refuses an address that is not loopback.
"""
