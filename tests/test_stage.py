"""stage.run_stage: what every stage's entry point shares."""

import os
import tempfile
from pathlib import Path

from cifar10_mlops.core.stage import run_stage


def test_a_killed_stage_leaves_temporary_files_only_until_its_next_run(tmp_path):
    """Whatever a stage (or MLflow, TensorFlow inside it) puts in the temporary folder is in
    its own scratch folder: gone at exit, and after kill -9 gone at the stage's next run."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys, tempfile, time\n"
        "from cifar10_mlops.core.stage import run_stage\n"
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


def test_the_caller_gets_its_temporary_folder_back(tmp_path, monkeypatch):
    """In-process callers (a notebook, `cifar10-mlops predict` from Python) keep working."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    seen = []
    run_stage(lambda: seen.append(tempfile.gettempdir()), name="demo")
    assert Path(seen[0]).parent == tmp_path and not Path(seen[0]).exists()
    assert os.environ["TMPDIR"] == str(tmp_path) and tempfile.gettempdir() == str(tmp_path)
    tempfile.mkdtemp()  # the folder exists again
