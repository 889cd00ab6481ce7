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


def test_two_writers_of_one_file_never_share_a_temporary_one(tmp_path):
    path = tmp_path / "model.keras"
    with replacing(path) as first:
        first.write_text("first")
        with replacing(path) as second:
            assert second != first and second.suffix == ".keras"  # Keras checks the suffix
            second.write_text("second")
        assert path.read_text() == "second"
    assert path.read_text() == "first"  # each replaced it whole; neither lost its file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_a_link_planted_beside_the_file_cannot_redirect_the_write(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    path = tmp_path / "metrics.json"
    for guess in (".metrics.tmp.json", ".metrics.json.tmp", "metrics.json.tmp"):
        (tmp_path / guess).symlink_to(victim)  # where a fixed temporary name would be
    with replacing(path) as tmp:
        tmp.write_text("{}")
    assert victim.read_text() == "untouched" and path.read_text() == "{}"
    assert not path.is_symlink()


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
