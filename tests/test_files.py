"""The file idioms every stage shares."""

import hashlib

import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.core.files import file_digests, replacing, require_files, write_json


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
