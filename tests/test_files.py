"""The file idioms every stage shares."""

import hashlib
import os
from pathlib import Path

import pytest

from cifar10_mlops.errors import PipelineError
from cifar10_mlops.files import file_digests, replacing, require_files, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "reports" / "metrics.json"
    write_json(path, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text('{"accuracy": 0.')  # half-written when the stage dies
        raise RuntimeError("killed")
    assert path.read_text() == '{\n  "accuracy": 0.5\n}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_digests_are_computed_in_one_read(tmp_path):
    path = tmp_path / "archive.tar.gz"
    path.write_bytes(b"x" * (3 << 20))  # several chunks
    found = file_digests(path, "md5", "sha256")
    assert found == {
        "md5": hashlib.md5(path.read_bytes()).hexdigest(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def test_a_missing_input_names_the_file_and_what_makes_it(tmp_path):
    present = tmp_path / "run.json"
    present.write_text("{}")
    with pytest.raises(PipelineError, match=r"model.keras not found: run the train stage first"):
        require_files(present, tmp_path / "model.keras", hint="run the train stage first")


def test_a_killed_stage_leaves_temporary_files_only_until_its_next_run(tmp_path):
    """Whatever a stage (or MLflow, TensorFlow inside it) puts in the temporary folder is in
    its own scratch folder: gone at exit, and after kill -9 gone at the stage's next run."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, tempfile, time\n"
        "from cifar10_mlops.stage import run_stage\n"
        "def main():\n"
        "    fd, path = tempfile.mkstemp(suffix='.bin'); print(path, flush=True)\n"
        "    if sys.argv[1] == 'hang': time.sleep(60)\n"
        "run_stage(main, name='demo')\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    def stage(mode: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", code, mode], stdout=subprocess.PIPE, text=True, env=env
        )

    killed = stage("hang")
    left = Path(killed.stdout.readline().strip())
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert left.is_file() and left.parent.name.startswith(f"cifar10-demo-{killed.pid}-")
    assert left.parent.parent == tmp_path
    done = stage("finish")
    made = Path(done.stdout.readline().strip())
    assert done.wait() == 0
    assert not left.exists() and not made.exists()
    assert list(tmp_path.iterdir()) == []
