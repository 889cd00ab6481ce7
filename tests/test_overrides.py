"""Parameter overrides a retrain run is started with (ops/overrides.py), applied to params.yaml
as `dvc exp run -S` applies them: a bad one is refused before the file is touched."""

from pathlib import Path

import pytest

from cifar10_mlops.core.errors import PipelineError
from cifar10_mlops.ops.overrides import apply_flow_params, apply_params

pytestmark = pytest.mark.integration


def test_bad_override_leaves_params_unchanged(flow_project):
    before, written = Path("params.yaml").read_bytes(), Path("params.yaml").stat().st_mtime_ns
    with pytest.raises(PipelineError, match=r"train.epochs: must be >= 1, got 0"):
        apply_params(["train.epochs=0"])
    with pytest.raises(PipelineError, match=r"has no train.epoch \(train: .*epochs"):
        apply_params(["train.epoch=3"])
    with pytest.raises(PipelineError, match="train.epochs=1,2: one value per key"):
        apply_params(["train.epochs=1,2"])
    for adds_or_deletes in ("++register.min_delta=0.5", "~register.min_delta"):
        with pytest.raises(PipelineError, match=r"not added \(\+KEY="):
            apply_params([adds_or_deletes])
    assert Path("params.yaml").read_bytes() == before
    assert Path("params.yaml").stat().st_mtime_ns == written  # not even rewritten


@pytest.mark.parametrize(
    "override",
    [
        "download.source=http://evil.example/cifar.tar.gz",
        "download.checksum=null",
        "register.min_delta=-1",
        "register.confidence=0.5",
    ],
)
def test_a_run_cannot_change_its_data_source_or_promotion_rules(flow_project, override):
    """A flow run's `set_params` (anyone who may start a run sets them) cannot point the run
    at other data nor lower the bar; publish-data and a commit can."""
    before = Path("params.yaml").read_bytes()
    section = override.split(".")[0]
    with pytest.raises(PipelineError, match=f"a run's parameters cannot change {section}"):
        apply_flow_params(None, ["train.epochs=2", override])
    assert Path("params.yaml").read_bytes() == before
    apply_params([override.replace("-1", "0.01").replace("0.5", "0.9")])  # publish-data's way
    assert Path("params.yaml").read_bytes() != before
    assert sorted(p.name for p in Path().glob(".params*")) == []
