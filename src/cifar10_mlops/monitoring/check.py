"""`cifar10-mlops drift`: test the newest images a server was asked to classify against the
reference `evaluate` saved for the model (monitoring/reference.py), with monitoring/drift.py.

    cifar10-mlops drift --window serving/window.npz     # what `serve --sample-dir` writes
    cifar10-mlops drift --sample-dir serving            # the same, and the server's metric too

It loads the model the URI names (default: the champion) and that version's reference, both
checked against the digests `evaluate` recorded; embeds the newest `monitor.window` images of
the window; writes drift.json and drift.png into --out; logs them, the p-values and the score
to an MLflow run of the experiment `<mlflow.experiment>-drift`, tagged with the version. With
--sample-dir the verdict also goes to DIR/drift.json, where the server reads it for
cifar10_drift_score. Exit status: 0 no drift, 3 drift, 1 an error (a one-line message), 2 a
wrong command line.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cifar10_mlops.core import artifacts, tracking
from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import write_json
from cifar10_mlops.core.settings import PARAMS_FILE, load_params
from cifar10_mlops.monitoring import drift, reference, report
from cifar10_mlops.serving.sample import VERDICT, WINDOW, read_window

REFERENCE_ARTIFACT = f"evaluation/{reference.FILE}"  # where evaluate logs it in the run
DETECTED = 3  # the exit status when drift is found (1 is an error, 2 a usage error)


@dataclass(frozen=True)
class Result:
    verdict: drift.Verdict
    files: list[Path]
    model: str  # "cifar10-cnn v3"
    run_id: str  # the MLflow run the report was logged to


def check(model_uri: str, window: Path, out: Path, params: Path = PARAMS_FILE) -> Result:
    """Test `window`'s newest images on the model `model_uri` names; write and log the report."""
    from cifar10_mlops.serving.predict import load_resolved

    cfg = load_params(params)
    images, about = read_window(window)
    images = images[-cfg.monitor.window :]
    if len(images) < cfg.monitor.min_images:
        raise PipelineError(
            f"{window}: {len(images)} images, the test needs at least {cfg.monitor.min_images} "
            "(params.yaml monitor.min_images); wait for more requests"
        )
    pyfunc, source = load_resolved(model_uri)
    if source.run_id is None or source.model_id is None:
        raise PipelineError(
            f"{model_uri}: not a registered or logged model, so it has no drift reference"
        )
    name = f"{source.name} v{source.version}" if source.version else source.uri
    with tempfile.TemporaryDirectory(prefix="cifar10-drift-") as tmp:
        ref = reference.load(_fetch_reference(source, Path(tmp), name))
    described = reference.describe(pyfunc.unwrap_python_model().model, images)
    verdict = drift.check_window(
        ref, described, alpha=cfg.monitor.alpha, permutations=cfg.monitor.permutations,
        seed=cfg.seed,
    )  # fmt: skip
    window_about = {"model": name, "model_uri": source.uri, "window": str(window)}
    window_about |= {f"window_{k}": v for k, v in about.items() if k != "model"}
    files = report.write(out, verdict, ref, described, window_about)
    run_id = _log(cfg.mlflow.experiment + "-drift", verdict, files, source, name)
    return Result(verdict, files, name, run_id)


def _fetch_reference(source, folder: Path, name: str) -> Path:
    import mlflow

    client = mlflow.MlflowClient()
    want = artifacts.logged_model_params(client, source.model_id).get(artifacts.REFERENCE_PARAM)
    if not want:
        raise PipelineError(
            f"{name} has no drift reference: it was evaluated before evaluate saved one; "
            "evaluate and register it again (dvc repro -f evaluate)"
        )
    uri = f"runs:/{source.run_id}/{REFERENCE_ARTIFACT}"
    return artifacts.verified(uri, want, folder, name, f"the drift reference of {name}")


def _log(experiment: str, verdict: drift.Verdict, files: list[Path], source, name: str) -> str:
    import mlflow

    experiment_id = tracking.configure(experiment)
    tags = {"model_name": source.name or "", "model_version": str(source.version or "")}
    tags |= {"model_uri": source.uri, "drift_detected": str(verdict.detected).lower()}
    with tracking.start_run(
        experiment_id=experiment_id, run_name=f"drift {name}", tags=tags
    ) as run:
        mlflow.log_params({"window_images": verdict.images, "alpha": verdict.alpha, "model": name})
        metrics = {"drift_score": verdict.score, "drift_detected": float(verdict.detected)}
        metrics |= {f"p_{test}": p for test, p in verdict.p_values.items()}
        mlflow.log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="drift")
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cifar10-mlops drift", description=__doc__.split("\n\n")[0]
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--window", type=Path, help="a window file (serve --sample-dir writes one)")
    where.add_argument(
        "--sample-dir", type=Path, help=f"the server's --sample-dir: tests its {WINDOW}, and "
        f"writes the verdict to its {VERDICT} for the server's metrics",
    )  # fmt: skip
    parser.add_argument(
        "-m", "--model", help="MLflow model URI (default: models:/<register.model_name>@champion)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/drift"))
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    uri = args.model or tracking.champion_uri(load_params(args.params).register.model_name)
    window = args.window or args.sample_dir / WINDOW
    result = check(uri, window, args.out, args.params)
    if args.sample_dir:
        about = {"model": result.model, "checked": time.time(), "mlflow_run": result.run_id}
        write_json(args.sample_dir / VERDICT, result.verdict.as_dict() | about)
    verdict = result.verdict
    word = "DRIFT (" + ", ".join(verdict.drifted) + ")" if verdict.detected else "no drift"
    tests = ", ".join(f"{t} p={p:.3g}" for t, p in verdict.p_values.items())
    print(
        f"{word}: {verdict.images} images of {window} against {result.model}'s reference "
        f"({tests}; score {verdict.score:.4f}) -> {args.out}; MLflow run {result.run_id}"
    )
    sys.exit(DETECTED if verdict.detected else 0)
