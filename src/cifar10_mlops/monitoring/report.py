"""A drift test's report: drift.json (the verdict, the model, the window) and drift.png (four
panels, one per test: the embeddings of reference and window on the reference's two main axes,
the predicted-class shares, the top-1 probabilities, the images' mean pixel values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifar10_mlops.core.dataset import CLASSES
from cifar10_mlops.core.files import replacing, write_json
from cifar10_mlops.monitoring.drift import Verdict

JSON, PICTURE = "drift.json", "drift.png"


def write(folder: Path, verdict: Verdict, reference: dict, window: dict, about: dict) -> list[Path]:
    """drift.json and drift.png in `folder`; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / JSON, {**verdict.as_dict(), **about})
    plot(folder / PICTURE, verdict, reference, window, about.get("model", ""))
    return [folder / JSON, folder / PICTURE]


def plot(path: Path, verdict: Verdict, reference: dict, window: dict, model: str) -> None:
    fig = Figure(figsize=(12, 9))
    ref_e, win_e = reference["embeddings"], window["embeddings"]
    center = ref_e.mean(axis=0)
    axes = np.linalg.svd(ref_e - center, full_matrices=False)[2][:2].T
    ax = fig.add_subplot(2, 2, 1)
    for points, label, color in ((ref_e, "reference", "0.6"), (win_e, "window", "tab:orange")):
        xy = (points - center) @ axes
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.5, color=color, label=label)
    ax.set(title=_title("embeddings", verdict), xlabel="1st principal axis", ylabel="2nd")
    ax.legend(markerscale=3)

    ax = fig.add_subplot(2, 2, 2)
    where = np.arange(len(CLASSES))
    for offset, (values, label, color) in enumerate(
        ((reference["predicted"], "reference", "0.6"),
         (window["predicted"], "window", "tab:orange"))
    ):  # fmt: skip
        shares = np.bincount(values, minlength=len(CLASSES))[: len(CLASSES)] / max(len(values), 1)
        ax.bar(where + (offset - 0.5) * 0.4, shares, width=0.4, color=color, label=label)
    ax.set_xticks(where, CLASSES, rotation=45)
    ax.set(title=_title("classes", verdict), ylabel="share of predictions")
    ax.legend()

    for at, test, bins, label in (
        (3, "confidence", np.linspace(0, 1, 21), "top-1 probability"),
        (4, "brightness", np.linspace(0, 255, 27), "mean pixel value of an image"),
    ):
        ax = fig.add_subplot(2, 2, at)
        ax.hist(reference[test], bins, density=True, color="0.6", label="reference")
        ax.hist(window[test], bins, density=True, histtype="step", lw=2,
                color="tab:orange", label="window")  # fmt: skip
        ax.set(title=_title(test, verdict), xlabel=label, ylabel="density")
        ax.legend(loc="upper left")

    word = "DRIFT" if verdict.detected else "no drift"
    fig.suptitle(
        f"{word}: {verdict.images} images against {len(ref_e)} reference images of {model} "
        f"(alpha {verdict.alpha}, each test at alpha/{len(verdict.p_values)})"
    )
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def _title(test: str, verdict: Verdict) -> str:
    mark = " (drift)" if test in verdict.drifted else ""
    return f"{test}: p = {verdict.p_values[test]:.3g}{mark}"
