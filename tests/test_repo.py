"""The git and DVC workspace a retrain runs in (core/repo.py), on a copy of the reproduced
tiny pipeline."""

from pathlib import Path

import pytest

from cifar10_mlops.core import repo
from helpers import git

pytestmark = pytest.mark.integration


def test_the_reset_after_a_run_leaves_work_outside_the_pipeline_alone(reproduced_flow_project):
    project = reproduced_flow_project
    readme = (project / "README.md").read_text()
    (project / "README.md").write_text(readme + "\nsomeone's edit during the run\n")
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("epochs: 1", "epochs: 3"))
    git(project, "add", "params.yaml")  # DVC's autostage does this to dvc.lock
    assert repo.foreign_changes(Path("params.yaml"), Path("dvc.yaml")) == [
        "README.md"
    ]  # so the run records nothing
    repo.reset_workspace(Path("params.yaml"), Path("dvc.yaml"))
    assert (project / "params.yaml").read_text() == params
    assert (project / "README.md").read_text().endswith("someone's edit during the run\n")
    assert git(project, "status", "--porcelain", "--untracked-files=no") == " M README.md\n"
