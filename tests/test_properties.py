"""Property tests (hypothesis): whatever params.yaml holds, whatever body a client sends to the
model server, whatever an archive's members are called, the outcome is a success or one line
saying what is wrong (a ConfigError, PipelineError or HTTP 4xx), never a traceback, a 500 or a
file written outside the target folder."""

import copy
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cifar10_mlops.core.archive import extract
from cifar10_mlops.core.errors import ConfigError, PipelineError
from cifar10_mlops.core.settings import load_params, params_from_dict
from helpers import REPO

# `make test` runs the same 150 cases each time (derandomized: a failure repeats); for a
# search, HYPOTHESIS_PROFILE=deep runs 3,000 new ones a test.
settings.register_profile("ci", max_examples=150, derandomize=True, database=None)
settings.register_profile("deep", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
EXAMPLES = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REAL = yaml.safe_load((REPO / "params.yaml").read_text())


def leaves(node, prefix=()) -> list[tuple]:
    if isinstance(node, dict) and node:
        return [p for k, v in node.items() for p in leaves(v, (*prefix, k))]
    return [prefix]


KEYS = leaves(REAL)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=12)
    | st.floats(allow_nan=True, allow_infinity=True)
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def one_line(exc: Exception) -> None:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, text


@EXAMPLES
@given(key=st.sampled_from(KEYS), value=VALUES, action=st.sampled_from(["set", "drop", "add"]))
def test_any_params_change_loads_or_is_one_line(key, value, action):
    raw = copy.deepcopy(REAL)
    *parents, leaf = key
    node = raw
    for part in parents:
        node = node[part]
    if action == "set":
        node[leaf] = value
    elif action == "drop":
        del node[leaf]
    else:
        node[f"{leaf}_extra"] = value
    try:
        params_from_dict(raw)
    except ConfigError as exc:
        one_line(exc)


@EXAMPLES
@given(text=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_params_file_loads_or_is_one_line(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_bytes(text)
    with pytest.raises((ConfigError, PipelineError)) as err:
        load_params(path)  # nothing this short is a whole params.yaml
    one_line(err.value)


# --- the model server ---------------------------------------------------------------------

NUMBERS = st.integers(-300, 300) | st.floats(allow_nan=False, width=32) | st.booleans()
IMAGE_LIKE = st.recursive(
    NUMBERS | st.text(max_size=3) | st.none(),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=40,
)
BODIES = st.one_of(
    st.dictionaries(
        st.sampled_from(["inputs", "instances", "dataframe_split", "dataframe_records", "x"]),
        IMAGE_LIKE, max_size=2,
    ).map(lambda d: json.dumps(d).encode()),
    st.builds(
        lambda n, v: json.dumps({"inputs": np.full((n, 32, 32, 3), v).tolist()}).encode(),
        st.integers(0, 2), st.sampled_from([0, 255, 256, -1, 0.5]),
    ),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The model server's app (serve: MLflow's scoring app behind limits.py) around the real
    pyfunc of serving/pyfunc.py and a small untrained network; `.plain`: the same without the
    fast path for integer pixels (batch.py)."""
    import mlflow
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    from cifar10_mlops.serving import pyfunc
    from cifar10_mlops.serving.limits import limit_requests
    from cifar10_mlops.serving.server import build_app
    from cifar10_mlops.training.model import build_model

    folder = tmp_path_factory.mktemp("served")
    network = build_model(
        "baseline", conv_1_filters=4, conv_2_filters=4, dense_units=8, dropout=0.0
    )
    network.save(folder / "model.keras")
    mlflow.pyfunc.save_model(
        folder / "pyfunc", python_model=pyfunc.__file__,
        artifacts={pyfunc.KERAS_ARTIFACT: str(folder / "model.keras")},
    )  # fmt: skip
    model = mlflow.pyfunc.load_model(folder / "pyfunc")
    plain = limit_requests(scoring_server.init(model), 60)  # every body parsed by MLflow
    with (
        TestClient(build_app(model), raise_server_exceptions=False) as client,
        TestClient(plain, raise_server_exceptions=False) as client.plain,
    ):
        yield client


@EXAMPLES
@given(
    body=BODIES,
    content_type=st.sampled_from(["application/json", "text/csv", "text/plain", ""]),
)  # fmt: skip
def test_any_request_body_is_answered_or_refused_with_a_4xx(server, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    answer = server.post("/invocations", content=body, headers=headers)
    assert answer.status_code in (200, 400, 413, 415, 422), (answer.status_code, answer.text)
    if answer.status_code == 200:
        predictions = np.asarray(answer.json()["predictions"])
        assert predictions.ndim == 2 and predictions.shape[1] == 10
    else:
        assert answer.text and "Traceback" not in answer.text
    assert server.get("/ping").status_code == 200  # and it keeps serving


IMAGE_BODIES = st.builds(
    lambda seed, n, indent, compact: json.dumps(
        {"inputs": np.random.default_rng(seed).choice([0, 7, 10, 99, 100, 255], (n, 32, 32, 3))
         .tolist()},
        indent=indent, separators=(",", ":") if compact else None,
    ).encode(),
    st.integers(0, 2**32), st.integers(1, 2), st.none() | st.integers(0, 2), st.booleans(),
)  # fmt: skip
EDITS = st.lists(
    st.tuples(st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 2**20),
              st.sampled_from(list(b"0123456789 \n,[]-.e\"x{}"))),
    max_size=3,
)  # fmt: skip


def edited(body: bytes, edits) -> bytes:
    for action, at, char in edits:
        at %= len(body)
        tail = body[at + (action != "insert") :]
        body = body[:at] + (b"" if action == "delete" else bytes([char])) + tail
    return body


@pytest.mark.extended  # 300 predictions: 1.5 min
@EXAMPLES
@given(body=IMAGE_BODIES, edits=EDITS)
def test_the_fast_path_answers_as_mlflow_does(server, body, edits):
    body = edited(body, edits)
    fast = server.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    plain = server.plain.post(
        "/invocations", content=body, headers={"Content-Type": "application/json"}
    )
    assert fast.status_code == plain.status_code, (fast.text[:300], plain.text[:300])
    if fast.status_code == 200:
        predictions = [np.asarray(answer.json()["predictions"]) for answer in (fast, plain)]
        np.testing.assert_allclose(*predictions, atol=1e-6)


# --- archives -----------------------------------------------------------------------------

NAMES = st.lists(
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), min_size=1,
            max_size=40)
    | st.sampled_from(["../x", "/etc/x", "a/../../x", "./a", "a//b", "..", ".", "a/", "\\..\\x"]),
    min_size=1, max_size=6,
)  # fmt: skip
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])


@EXAMPLES
@given(members=st.lists(st.tuples(NAMES.map("/".join), KINDS, st.text(max_size=20)), max_size=6))
def test_any_member_names_extract_inside_the_target_or_are_one_line(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("archive")
    archive, target = root / "a.tar", root / "out"
    buffer = io.BytesIO()
    try:
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, kind, link in members:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, link
                data = b"x" if kind == tarfile.REGTYPE else b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    except (ValueError, UnicodeError):  # tarfile cannot write it: no archive to test
        assume(False)
    archive.write_bytes(buffer.getvalue())
    try:
        extract(archive, target)
    except PipelineError as exc:
        one_line(exc)
    outside = {p.name for p in root.iterdir()} - {"a.tar", "out"}
    assert not outside, outside
    for path in target.rglob("*") if target.exists() else []:
        if path.is_symlink():  # where it points, lexically (a loop is harmless)
            points = os.path.normpath(os.path.join(path.parent, os.readlink(path)))
            assert Path(points).is_relative_to(target), (path, os.readlink(path))
