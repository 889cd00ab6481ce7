"""`cifar10-mlops drift` (monitoring/check.py) on a registered champion with its reference: a
window like the validation images passes, a brighter one drifts (exit 3), each leaves its
report in the folder and in MLflow, and what cannot be tested says why in one line."""

import json
import stat
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.monitoring import check, reference
from cifar10_mlops.serving.sample import VERDICT, WINDOW, read_window
from cifar10_mlops.stages import register
from helpers import make_images, stage_args
from servers import BIN, answers, env_with_bin, free_port, start, stop, wait_for


@pytest.fixture
def champion(candidate):
    """A registered champion (an untrained network) whose reference is 50 validation images
    of make_images' seed 1 (write_prepared's)."""
    candidate(0.6)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    return candidate.params


def window(folder, images):
    folder.mkdir(exist_ok=True)
    np.savez(folder / WINDOW, x=images, added=len(images))
    return folder


def drift(params, *args) -> int:
    with pytest.raises(SystemExit) as ended:
        check.main(["--params", str(params), "--out", "reports/drift", *args])
    return ended.value.code


def test_a_window_like_the_reference_passes_and_a_brighter_one_drifts(champion, tmp_path):
    clean, _ = make_images(4, seed=7, like=1)  # 40 images: params monitor.window
    served = window(tmp_path / "served", clean)
    assert drift(champion, "--sample-dir", str(served)) == 0
    verdict = json.loads((served / VERDICT).read_text())
    assert verdict["detected"] is False and verdict["model"] == "cifar10-cnn v1"
    report = json.loads(open("reports/drift/drift.json").read())
    assert report["images"] == 40 and report["window_added"] == 40

    brighter = np.clip(clean.astype(int) + 100, 0, 255).astype(np.uint8)
    assert drift(champion, "--window", str(window(tmp_path / "b", brighter) / WINDOW)) == 3
    report = json.loads(open("reports/drift/drift.json").read())
    assert report["detected"] is True and "embeddings" in report["drifted"]

    runs = mlflow.search_runs(experiment_names=["cifar10-cnn-drift"], order_by=["start_time"])
    assert runs["tags.drift_detected"].tolist() == ["false", "true"]
    assert (runs["tags.model_version"] == "1").all()
    assert runs["metrics.p_embeddings"].iloc[1] < 0.01 / 3 < runs["metrics.p_embeddings"].iloc[0]
    logged = mlflow.artifacts.list_artifacts(run_id=runs["run_id"].iloc[1], artifact_path="drift")
    assert {a.path for a in logged} == {"drift/drift.json", "drift/drift.png"}


def test_too_few_images_are_not_tested(champion, tmp_path):
    few, _ = make_images(1, seed=7, like=1)
    with pytest.raises(PipelineError, match="10 images, the test needs at least 20"):
        check.check("models:/cifar10-cnn@champion", window(tmp_path, few) / WINDOW,
                    tmp_path / "out", champion)  # fmt: skip


def test_a_model_evaluated_without_a_reference_says_how_to_get_one(candidate, tmp_path):
    candidate(0.6, drift_reference=False)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    images, _ = make_images(4, seed=7, like=1)
    with pytest.raises(PipelineError, match=r"v1 has no drift reference.*dvc repro -f evaluate"):
        check.check("models:/cifar10-cnn@champion", window(tmp_path, images) / WINDOW,
                    tmp_path / "out", candidate.params)  # fmt: skip


def test_a_reference_changed_after_it_was_logged_is_refused(champion, tmp_path):
    [logged] = Path("mlruns").rglob(f"evaluation/{reference.FILE}")
    data = dict(np.load(logged))
    data["confidence"] = np.ones_like(data["confidence"])
    np.savez(logged, **data)
    images, _ = make_images(4, seed=7, like=1)
    with pytest.raises(PipelineError, match="changed since; refusing to use it"):
        check.check("models:/cifar10-cnn@champion", window(tmp_path, images) / WINDOW,
                    tmp_path / "out", champion)  # fmt: skip


def served_metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        name: float(value)
        for name, value in (line.split(" ") for line in text.splitlines() if line[:1] != "#")
        if name.startswith("cifar10_drift")
    }


@pytest.mark.extended  # a model server and two drift runs: 1.5 min in the full suite
@pytest.mark.long(seconds=90)
def test_the_server_keeps_what_it_is_asked_and_reports_the_last_drift_test(champion, tmp_path):
    port, log, sample = free_port(), tmp_path / "serve.log", tmp_path / "served"
    env = env_with_bin(MLFLOW_TRACKING_URI=f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")
    options = ["--params", str(champion)]
    cmd = [BIN / "cifar10-mlops", "serve", *options, "--port", port, "--sample-dir", sample]
    server = start([*cmd, "--sample-seconds", "1"], log, env, Path.cwd())

    def ask(images) -> None:
        body = json.dumps({"inputs": images.tolist()}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"content-type": "application/json"}
        )
        assert urllib.request.urlopen(request, timeout=60).status == 200

    def drift_after(added: int) -> int:
        def written() -> bool:
            return (sample / WINDOW).exists() and read_window(sample / WINDOW)[1]["added"] == added

        wait_for(written, f"a window of {added} images", server, log, seconds=30)
        ran = subprocess.run(
            [BIN / "cifar10-mlops", "drift", *options, "--sample-dir", sample, "--out", tmp_path],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode in (0, 3), ran.stderr
        return ran.returncode

    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/ping"), "model server", server, log)
        assert served_metrics(port)["cifar10_drift_score"] == 0  # no test yet
        clean, _ = make_images(4, seed=7, like=1)
        ask(clean[:25])
        ask(clean[25:])
        assert drift_after(40) == 0
        verdict = json.loads((sample / VERDICT).read_text())
        seen = served_metrics(port)
        assert seen["cifar10_drift_detected"] == 0
        assert seen["cifar10_drift_score"] == pytest.approx(verdict["score"])
        assert seen["cifar10_drift_checked_timestamp_seconds"] == pytest.approx(verdict["checked"])

        ask(np.clip(clean.astype(int) + 100, 0, 255).astype(np.uint8))  # the newest 40
        assert drift_after(80) == 3
        assert served_metrics(port)["cifar10_drift_detected"] == 1
        assert stat.S_IMODE(sample.stat().st_mode) == 0o700
    finally:
        stop(server)
