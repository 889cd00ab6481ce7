"""`cifar10-mlops predict` and `request` as a user runs them, against a registered champion."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar10_mlops.serving import images as image_files, predict, pyfunc as serving
from cifar10_mlops.stages import register
from cifar10_mlops.core import artifacts
from cifar10_mlops.core.errors import PipelineError
from helpers import cli, error_line, stage_args


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n%%EOF\n"


def save(path: Path, size=(32, 32), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze() if channels == 1 else pixels, mode).save(path)
    return path


@pytest.fixture
def champion(candidate):
    candidate(0.61)
    register.main(["--params", str(candidate.params), *stage_args("register")])
    return Path.cwd()


def test_predict_classifies_files_and_folders_of_any_size(champion, capsys):
    images = champion / "images"
    images.mkdir()
    save(images / "a.png")
    save(images / "b.jpg", size=(640, 480), seed=1)
    (images / "notes.txt").write_text("not an image")  # skipped in a folder: not an image suffix
    extra = save(champion / "c.bmp", size=(20, 50), seed=2)

    result = cli("predict", "images", str(extra), "--format", "json", cwd=champion)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["model"] == "models:/cifar10-cnn@champion"
    assert out["resolved"]["uri"] == "models:/cifar10-cnn/1"
    rows = out["predictions"]
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.jpg", "c.bmp"]
    for row in rows:
        assert sum(row["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert row["class"] == max(row["probabilities"], key=row["probabilities"].get)

    # the same probabilities as the registered model on the same resized pixels
    import mlflow

    model = mlflow.pyfunc.load_model("models:/cifar10-cnn@champion")
    direct = model.predict(np.stack([predict.load_image(images / "b.jpg")]))[0]
    assert list(rows[1]["probabilities"].values()) == pytest.approx(direct.tolist(), abs=1e-5)

    # the table format, and a version named by number (in-process: the CLI is checked above)
    capsys.readouterr()
    predict.main(["images", "--model", "models:/cifar10-cnn/1"])
    model, header, *lines = capsys.readouterr().out.splitlines()
    assert model.startswith("model: models:/cifar10-cnn/1 -> cifar10-cnn v1 (run ")
    assert header.split() == ["file", "class", "prob", "runner-up"] and len(lines) == 2


def test_predict_takes_more_images_than_the_model_takes_in_one_call(champion, capsys):
    """The model refuses over 1,024 images a call; predict sends them in batches."""
    folder = champion / "many"
    folder.mkdir()
    count = serving.MAX_IMAGES + 6
    for i in range(count):
        save(folder / f"{i:04d}.png", seed=i)
    predict.main(["many", "--format", "json"])
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(rows) == count and rows[-1]["file"].endswith(f"{count - 1:04d}.png")
    import mlflow

    model = mlflow.pyfunc.load_model("models:/cifar10-cnn@champion")
    alone = model.predict(predict.load_image(folder / f"{count - 1:04d}.png")[None])[0]
    assert list(rows[-1]["probabilities"].values()) == pytest.approx(alone.tolist(), abs=1e-5)


def test_predict_names_the_version_that_answered(candidate, capsys, monkeypatch):
    import mlflow

    registering = ["--params", str(candidate.params), *stage_args("register")]
    first = candidate(0.61)
    register.main(registering)  # v1, the champion
    second = candidate(0.50)
    register.main(registering)  # v2, only the challenger: worse
    save(Path("a.png"))
    client = mlflow.MlflowClient()
    capsys.readouterr()

    def run(*args: str) -> str:
        predict.main(["a.png", *args])
        return capsys.readouterr().out

    champion = "model: models:/cifar10-cnn@champion -> cifar10-cnn"
    assert run().splitlines()[0] == f"{champion} v1 (run {first})"

    # the alias moves to v2 while v1 loads (a `register` at the same moment): v1 answers, and
    # the output says so
    loaded, load = [], artifacts.load_model

    def load_while_the_alias_moves(client_, model_id, *args, **kwargs):
        client.set_registered_model_alias("cifar10-cnn", "champion", "2")
        loaded.append(model_id)
        return load(client_, model_id, *args, **kwargs)

    v1 = artifacts.model_id_of(client.get_model_version("cifar10-cnn", "1"))
    with monkeypatch.context() as patch:
        patch.setattr(artifacts, "load_model", load_while_the_alias_moves)
        out = json.loads(run("--format", "json"))
    assert loaded == [v1]
    assert out["model"] == "models:/cifar10-cnn@champion"
    assert out["resolved"] == {
        "uri": "models:/cifar10-cnn/1", "name": "cifar10-cnn", "version": 1, "run_id": first,
        "model_id": v1,
    }  # fmt: skip

    assert run().splitlines()[0] == f"{champion} v2 (run {second})"
    assert json.loads(run("--format", "json"))["resolved"]["version"] == 2


def test_a_run_or_a_folder_is_no_registered_version(champion, capsys):
    import mlflow

    run = mlflow.MlflowClient().get_model_version("cifar10-cnn", "1").run_id
    folder = mlflow.artifacts.download_artifacts("models:/cifar10-cnn/1", dst_path="copy")
    save(champion / "a.png")
    capsys.readouterr()
    logged = artifacts.model_id_of(mlflow.MlflowClient().get_model_version("cifar10-cnn", "1"))
    for uri, run_id, model_id, named in [
        (f"runs:/{run}/model", run, logged, f"(run {run}, not a registered version)"),
        (folder, None, None, "(not a registered version)"),
    ]:
        predict.main(["a.png", "--model", uri, "--format", "json"])
        resolved = json.loads(capsys.readouterr().out)["resolved"]
        assert resolved == {
            "uri": uri, "name": None, "version": None, "run_id": run_id, "model_id": model_id
        }  # fmt: skip
        predict.main(["a.png", "--model", uri])
        assert capsys.readouterr().out.splitlines()[0] == f"model: {uri} {named}"


@pytest.mark.extended  # four CLI processes loading TensorFlow: 1.5 min
def test_predict_prints_no_framework_noise_unless_verbose(champion, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # as in a user's shell
    save(champion / "a.png")
    plain = cli("predict", "a.png", cwd=champion)
    assert plain.returncode == 0 and plain.stderr == ""
    verbose = cli("predict", "a.png", "--verbose", cwd=champion)
    assert verbose.returncode == 0 and verbose.stdout == plain.stdout
    # TensorFlow's absl lines (oneDNN on x86 CPUs, CUDA on GPUs), MLflow's UserWarning
    assert re.search(r"absl|UserWarning", verbose.stderr), verbose.stderr


def test_load_image_crops_the_centre_and_resizes(tmp_path):
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, 100:200] = 255  # white central square between black side bands
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    image = predict.load_image(tmp_path / "wide.png")
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image.min() > 200  # only the central square survives (bicubic blurs its edges)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not a picture"), "not a PNG, JPEG, BMP, GIF, WEBP or TIFF"),
        (lambda p: p.write_bytes(EPS), "not a PNG, JPEG, BMP, GIF, WEBP or TIFF image"),
        (lambda p: save(p, mode="L"), "grayscale (1 channel) image, the model takes RGB"),
        (lambda p: save(p, mode="RGBA"), "RGBA (4 channels) image, the model takes RGB"),
        (lambda p: p.write_bytes(save(p).read_bytes()[:60]), "cannot decode the image"),
    ],
    ids=["empty", "not-an-image", "eps-named-png", "grayscale", "rgba", "truncated"],
)
def test_bad_image_is_a_one_line_error(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    result = cli("predict", str(path), "--model", "models:/unused@champion", cwd=tmp_path)
    assert result.returncode == 1
    assert error_line(result).startswith(f"error: {path}: {message}")
    assert not (tmp_path / "mlruns").exists()  # the inputs are checked before any model loads


def test_grayscale_and_rgba_convert_on_request(tmp_path):
    assert predict.load_image(save(tmp_path / "g.png", mode="L"), convert=True).shape == (32, 32, 3)
    assert predict.load_image(save(tmp_path / "a.png", mode="RGBA"), convert=True).shape == (
        32,
        32,
        3,
    )


def test_huge_image_is_refused_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(image_files, "MAX_PIXELS", 100 * 100)
    path = save(tmp_path / "big.png", size=(101, 100))
    with pytest.raises(PipelineError, match=r"101x100 image is too large"):
        predict.load_image(path)


def test_no_champion_yet_is_a_clear_message(in_project, params_file, tmp_path):
    from cifar10_mlops.core import tracking

    tracking.configure("cifar10-cnn")  # a store with runs but no registered model
    save(tmp_path / "a.png")
    result = cli("predict", "a.png", "--params", str(params_file()), cwd=in_project)
    assert result.returncode == 1
    assert re.fullmatch(
        r"error: no champion yet: model 'cifar10-cnn' has no version with the alias 'champion' "
        r"in sqlite:///\S*mlruns/mlflow.db; run the pipeline \(make repro\) to register one",
        error_line(result),
    )


def test_request_writes_the_json_body_mlflow_serves(tmp_path):
    save(tmp_path / "a.png", size=(64, 64))
    result = cli("request", "a.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert np.array(body["inputs"]).shape == (1, 32, 32, 3)
    assert np.array_equal(body["inputs"][0], predict.load_image(tmp_path / "a.png"))


def test_no_store_is_a_clear_message_and_creates_none(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default, embedded store
    save(tmp_path / "a.png")
    result = cli("predict", "a.png", "--model", "models:/cifar10-cnn@champion", cwd=tmp_path)
    assert result.returncode == 1
    assert error_line(result).startswith(
        "error: no MLflow store at mlruns/mlflow.db: run the pipeline first (make repro)"
    )
    assert not (tmp_path / "mlruns").exists()


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """What a real folder holds besides images: links (broken, looping, to another folder),
    a fifo and a file that is not an image."""
    import os

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    save(folder / "a.png")
    save(folder / "sub" / "b.png", seed=1)
    other = tmp_path / "elsewhere"
    other.mkdir()
    save(other / "c.png", seed=2)
    (folder / "gone.png").symlink_to(tmp_path / "deleted.png")  # broken
    (folder / "sub" / "loop").symlink_to("..")  # back to photos/
    (folder / "more").symlink_to(other)  # followed once
    os.mkfifo(folder / "pipe.png")  # reading it would block forever
    (folder / "bad.jpg").write_text("not a picture")
    return folder


def test_links_and_special_files_in_a_folder_are_warnings_not_tracebacks(messy_folder):
    result = subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.cli", "request", str(messy_folder)],
        capture_output=True, text=True, timeout=60, cwd=messy_folder.parent,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    *warnings, error = result.stderr.strip().splitlines()
    assert error == (
        f"error: {messy_folder}/bad.jpg: not a PNG, JPEG, BMP, GIF, WEBP or TIFF image that can "
        "be read (--skip-bad skips such files)"
    )
    assert sorted(w.split(": ", 2)[2] for w in warnings) == [
        "skipped, a broken link",
        f"skipped, a link to a folder already read ({messy_folder})",
        "skipped, not a regular file",
    ]


def test_skip_bad_leaves_out_what_cannot_be_read(messy_folder):
    result = subprocess.run(
        [sys.executable, "-m", "cifar10_mlops.cli", "request", str(messy_folder), "--skip-bad"],
        capture_output=True, text=True, timeout=60, cwd=messy_folder.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert len(body["inputs"]) == 3  # a.png, more/c.png, sub/b.png
    assert (
        f"warning: skipped {messy_folder}/bad.jpg: not a PNG, JPEG, BMP, GIF, WEBP or TIFF image"
        in result.stderr
    )


def test_skip_bad_with_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "x.png").write_text("no")
    result = cli("request", "x.png", "--skip-bad", cwd=tmp_path)
    assert result.returncode == 1
    assert error_line(result) == ("error: none of the 1 files is an image that can be read")


def test_a_broken_link_named_on_the_command_line(tmp_path):
    (tmp_path / "x.png").symlink_to(tmp_path / "nowhere.png")
    result = cli("request", "x.png", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: x.png: broken link to {tmp_path}/nowhere.png"


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """65535 is white and 32896 mid-grey in a 16-bit PNG; converting as Pillow does by default
    clipped every value over 255 to white."""
    values = np.full((32, 32), 32896, np.uint16)
    values[:, 16:] = 65535
    path = tmp_path / "16bit.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in image_files.SIXTEEN_BIT
    pixels = predict.load_image(path, convert=True)
    assert pixels[16, 4].tolist() == [128, 128, 128] and pixels[16, 28].tolist() == [255, 255, 255]
    with pytest.raises(PipelineError, match="16-bit grayscale image|integer grayscale image"):
        predict.load_image(path)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)  # black, fully transparent
    rgba[:, 16:] = [200, 0, 0, 255]  # opaque red on the right
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    pixels = predict.load_image(path, convert=True)
    assert pixels[16, 4].tolist() == [255, 255, 255] and pixels[16, 28].tolist() == [200, 0, 0]


def test_a_photo_is_read_upright_by_its_exif_orientation(tmp_path):
    """Stored 40x20 with red on the left and blue on the right, tagged 'rotate 90 degrees
    clockwise to show' (orientation 6), as phones save portraits: shown, red is on top."""
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = [255, 0, 0]
    stored[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    pixels = predict.load_image(path).astype(int)
    top, bottom = pixels[2, 16], pixels[29, 16]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0], (top, bottom)


def test_a_float_image_is_refused_by_name(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.ones((8, 8), np.float32)).save(path)
    with pytest.raises(PipelineError, match="32-bit float image, whose range is unknown"):
        predict.load_image(path, convert=True)
