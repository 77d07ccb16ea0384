"""Transformers beyond classification: DETR on generated scenes, with a CNN and an attention backbone.

DETR (Carion et al. 2020) detects objects as a set: learned queries, a Transformer encoder-decoder,
Hungarian matching, no anchors and no non-maximum suppression (`convattn.models.detr`). The section
trains it on `detect_shapes` (1-4 squares, circles, triangles and crosses per 64×64 image on noise)
through the project's trainer and scores it with COCO's AP (`convattn.data.coco_map`), for two
backbones: the ResNet with convolutions, and the same ResNet with SASA 3×3 local attention in place
of every 3×3 conv. As in DETR, each backbone is first trained as a classifier (on `shapes`, the same
four shapes alone at 32×32, in place of ImageNet) and initialises the detector (`init_from`).

DETR's learned queries must find where to look from the matching alone, which takes DETR hundreds of
epochs; the detectors here give the decoder's cross-attention a Gaussian prior around a learned
reference point per query (`spatial_prior`, as SMCA does; the quadratic encoding of Cordonnier et al.
applied to cross-attention). Beside them the CNN detector trains with DETR's own queries (no prior)
on the same recipe, so the run measures what the prior is worth.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, cast

import torch

from convattn.analysis.flops import count_macs
from convattn.analysis.summary import count_parameters
from convattn.data import load_detection
from convattn.study.budget import DetrBudget
from convattn.study.runs import run_chains, run_folder
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig, load_weights
from convattn.utils.records import read_csv, write_csv

__all__ = ["DETECTORS", "GOOD_AP50", "SECTION", "describe", "plot", "run"]

# (label, preset, model options, backbone kind): the detectors the section trains, in its table's order
DETECTORS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("DETR, CNN backbone, spatial prior", "detr_shapes", {}, "CNN"),
    ("DETR, SASA 3×3 backbone, spatial prior", "detr_shapes_sasa", {}, "attention"),
    ("DETR, CNN backbone, DETR's queries", "detr_shapes", {"spatial_prior": 0.0}, "CNN"),
)
GOOD_AP50 = 0.5  # a detector at or above this AP50 finds most objects with a well-placed box
SHOWN = 4  # test images in the boxes figure
QUERIES = 4  # queries in the cross-attention figure
SCORE = 0.5  # predictions drawn in the boxes figure: class probability at least this


def _pretrain_config(preset: str, b: DetrBudget, seed: int) -> TrainConfig:
    """The classifier whose stem and blocks initialise `preset`'s backbone: resnet_tiny (DETR's tiny
    backbone: width 8, one block per stage) with the same mixer, on `shapes`."""
    from convattn.models.registry import model_info

    defaults = model_info(preset).defaults
    options: dict[str, Any] = {k: defaults[k] for k in ("mixer", "mixer_options") if k in defaults}
    return TrainConfig(
        model="resnet_tiny", data="shapes", n_train=b.pretrain_images, epochs=b.pretrain_epochs,
        batch_size=32, lr=2e-3, crop_pad=0, flip=True, threads=1, seed=seed, data_seed=seed,
        eval_every=b.pretrain_epochs, model_options=options,
    )  # fmt: skip


def _detr_config(
    preset: str, options: dict[str, Any], init_from: Path, b: DetrBudget, seed: int
) -> TrainConfig:
    """DETR's recipe at this scale: AdamW lr 1e-3 (backbone too), weight decay 1e-4, gradient norm
    clipped to 1, batch 8, flips, warm-up + cosine; DETR's loss (1·class + 5·L1 + 2·GIoU, eos 0.1)."""
    return TrainConfig(
        model=preset, data="detect_shapes", n_train=b.n_train, epochs=b.epochs, batch_size=8, lr=1e-3,
        weight_decay=1e-4, clip_grad=1.0, flip=True, threads=1, seed=seed, data_seed=seed,
        eval_every=b.epochs, init_from=str(init_from), model_options=options,
    )  # fmt: skip


def _row(label: str, kind: str, cfg: TrainConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    model, _ = load_weights(run_folder(cfg))
    last = history[-1]
    return {
        "detector": label,
        "backbone": kind,
        "spatial_prior": float(model.spatial_prior),  # type: ignore[arg-type]
        "AP": round(last["test_AP"], 4),
        "AP50": round(last["test_AP50"], 4),
        "AP75": round(last["test_AP75"], 4),
        "recall": round(last["test_recall"], 4),
        "train_AP50": round(last["train_eval_AP50"], 4),
        "params": count_parameters(model),
        "macs": count_macs(model.eval(), torch.zeros(1, 3, 64, 64)),
        "train_images_per_s": round(sum(h["images_per_s"] for h in history) / len(history), 1),
        "epochs": len(history),
        "steps": last["step"],
        "train_s": round(sum(h["seconds"] for h in history), 1),
    }


@torch.no_grad()
def _pictures(
    cfgs: list[TrainConfig], labels: list[str], seed: int, n_train: int
) -> dict[str, list[dict[str, Any]]]:
    """The rows of pixels.csv, boxes.csv and attention.csv: SHOWN test images, their true boxes and
    every detector's predictions (every query; the figure draws those scoring SCORE or more), and the
    first detector's cross-attention
    (mean over heads) of its QUERIES most confident queries on the first image."""
    from convattn.models.detr import DETR, postprocess, targets_to_coco

    _, test = load_detection("detect_shapes", seed=seed, n_train=n_train)
    H, W = test.images.shape[-2:]
    images = test.images[:SHOWN]  # (SHOWN, 3, H, W) uint8
    pixels = [
        {"image": i, "y": y, "x": x, "r": int(px[0]), "g": int(px[1]), "b": int(px[2])}
        for i in range(SHOWN) for y in range(H) for x in range(W)
        for px in [images[i, :, y, x]]
    ]  # fmt: skip
    boxes: list[dict[str, Any]] = []
    for i, t in enumerate(targets_to_coco(test.targets(range(SHOWN)), H, W)):
        boxes += [{"image": i, "detector": "truth", "label": test.classes[int(c)], "score": 1.0, "query": -1,
                   **dict(zip("xywh", (round(float(v), 2) for v in b), strict=True))}
                  for b, c in zip(t["boxes"], t["labels"], strict=True)]  # fmt: skip
    attention: list[dict[str, Any]] = []
    for d, (cfg, label) in enumerate(zip(cfgs, labels, strict=True)):
        model, _ = load_weights(run_folder(cfg))
        model.eval()
        outputs = model(test.normalize(images))
        detections = postprocess(outputs, H, W)
        for i, det in enumerate(detections):
            for q in range(len(det["scores"])):
                xywh = (round(float(v), 2) for v in det["boxes"][q])
                boxes.append({"image": i, "detector": label, "label": test.classes[int(det["labels"][q])],
                              "score": round(float(det["scores"][q]), 3), "query": q,
                              **dict(zip("xywh", xywh, strict=True))})  # fmt: skip
        if d == 0:  # the first detector's cross-attention on image 0: (heads, Q, h·w) -> mean over heads
            weights = cast(DETR, model).cross_attention()[0].mean(0)  # (Q, h·w)
            w = math.isqrt(weights.shape[-1])  # the square map of a square image
            top = detections[0]["scores"].argsort(descending=True)[:QUERIES]
            attention += [
                {"query": int(q), "row": r, "col": c, "weight": round(float(weights[q, r * w + c]), 5)}
                for q in top for r in range(w) for c in range(w)
            ]  # fmt: skip
    return {"pixels": pixels, "boxes": boxes, "attention": attention}


def run(folder: Path, *, budget: DetrBudget, seed: int, quick: bool) -> dict[str, Any]:
    """Pre-train the backbones, train the detectors, score them; write detection.csv and the figures.

    Args:
        folder: the section folder (its runs live in the study's shared runs).
        budget: the sizes (`convattn.study.budget.DetrBudget`).
        seed: seed of the data, the initialisation and the order.
        quick: a smoke-test budget (said in the paragraph).
    """
    folder = Path(folder)
    # The scenes of the figures are generated here while the workers train.
    warm = threading.Thread(
        target=lambda: load_detection("detect_shapes", seed=seed, n_train=budget.n_train), daemon=True
    )
    warm.start()
    chosen = [d for d in DETECTORS if budget.plain or d[2].get("spatial_prior", 1) != 0]
    presets = list(dict.fromkeys(preset for _, preset, _, _ in chosen))
    pretrain = {p: _pretrain_config(p, budget, seed) for p in presets}
    cfgs = [_detr_config(p, o, run_folder(pretrain[p]), budget, seed) for _, p, o, _ in chosen]
    # One chain per backbone, in one worker: its pre-training, then the detectors that start from it.
    members = {p: [i for i, d in enumerate(chosen) if d[1] == p] for p in presets}
    histories = run_chains([[pretrain[p], *(cfgs[i] for i in members[p])] for p in presets])
    got: dict[int, list[dict[str, Any]]] = {}  # detector index -> its history
    pre: dict[str, list[dict[str, Any]]] = {}  # backbone mixer -> its pre-training's history
    for p, (first, *rest) in zip(presets, histories, strict=True):
        pre[pretrain[p].model_options.get("mixer", "conv")] = first
        got.update(zip(members[p], rest, strict=True))
    rows = [_row(label, kind, cfgs[i], got[i]) for i, (label, _, _, kind) in enumerate(chosen)]
    pretrained = [
        {"backbone": mixer, "shapes_test_acc": round(h[-1]["test_acc"], 4), "epochs": len(h)}
        for mixer, h in pre.items()
    ]
    warm.join()
    with_prior = [i for i, (_, _, o, _) in enumerate(chosen) if o.get("spatial_prior", 1) != 0]
    pictures = _pictures(
        [cfgs[i] for i in with_prior], [chosen[i][0] for i in with_prior], seed, budget.n_train
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "detection.csv", rows)
    for name, table in pictures.items():
        write_csv(folder / f"{name}.csv", table)
    plot(folder)
    return {
        "rows": rows,
        "pretrained": pretrained,
        "n_train": budget.n_train,
        "n_test": 500,
        "epochs": budget.epochs,
        "pretrain_images": budget.pretrain_images,
        "good_ap50": GOOD_AP50,
        "seed": seed,
        "quick": quick,
        "threads": torch.get_num_threads(),
    }


def plot(folder: Path) -> None:
    """detection_boxes.png (true boxes green, each detector's predictions on its own row) and
    detection_attention.png (the cross-attention of the first detector's most confident queries),
    from pixels.csv, boxes.csv and attention.csv."""
    import numpy as np

    from convattn.utils.plotting import plt, save_figure

    folder = Path(folder)
    pixels, boxes, attention = (read_csv(folder / f"{n}.csv") for n in ("pixels", "boxes", "attention"))
    n = 1 + max(int(p["image"]) for p in pixels)
    side = 1 + max(int(p["y"]) for p in pixels)
    image = np.zeros((n, side, side, 3), dtype=np.uint8)
    for p in pixels:
        image[int(p["image"]), int(p["y"]), int(p["x"])] = (int(p["r"]), int(p["g"]), int(p["b"]))
    detectors = [d for d in dict.fromkeys(b["detector"] for b in boxes) if d != "truth"]
    fig, axes = plt.subplots(len(detectors), n, figsize=(2.2 * n, 2.4 * len(detectors)), squeeze=False)
    for r, detector in enumerate(detectors):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(image[i])
            for b in boxes:
                if (
                    int(b["image"]) != i
                    or b["detector"] not in ("truth", detector)
                    or float(b["score"]) < SCORE
                ):
                    continue
                truth = b["detector"] == "truth"
                x, y, w, h = (float(b[k]) for k in "xywh")
                colour, width, line = ("#2ca02c", 1.6, "-") if truth else ("#d62728", 1.0, "--")
                ax.add_patch(
                    plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec=colour, lw=width, ls=line)
                )
                if not truth:
                    ax.text(x, y - 1, f"{b['label']} {float(b['score']):.2f}", color="#d62728", fontsize=5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(detector.replace(", spatial prior", "").replace("DETR, ", ""), fontsize=7)
    fig.suptitle("Test images: true boxes (green), predictions with score ≥ 0.5 (red)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, folder / "detection_boxes.png")

    queries = list(dict.fromkeys(int(a["query"]) for a in attention))
    cells = 1 + max(int(a["row"]) for a in attention)
    first = detectors[0]
    fig, axes = plt.subplots(1, len(queries), figsize=(2.2 * len(queries), 2.5), squeeze=False)
    for j, q in enumerate(queries):
        grid = np.zeros((cells, cells))
        for a in attention:
            if int(a["query"]) == q:
                grid[int(a["row"]), int(a["col"])] = float(a["weight"])
        ax = axes[0][j]
        ax.imshow(image[0])
        ax.imshow(grid, cmap="magma", alpha=0.6, extent=(-0.5, side - 0.5, side - 0.5, -0.5))
        for b in boxes:
            if int(b["image"]) == 0 and b["detector"] == first and int(b["query"]) == q:
                x, y, w, h = (float(b[k]) for k in "xywh")
                ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="#17becf", lw=1.2))
        ax.set_title(f"query {q}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{first}: cross-attention of the last decoder layer (mean over heads)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, folder / "detection_attention.png")


def _find(m: dict[str, Any], kind: str, prior: bool) -> dict[str, Any] | None:
    return next((r for r in m["rows"] if r["backbone"] == kind and (r["spatial_prior"] > 0) == prior), None)


def _scores(r: dict[str, Any]) -> str:
    return f"AP {r['AP']:.3f}, AP50 {r['AP50']:.3f}, AP75 {r['AP75']:.3f}"


def _fit(r: dict[str, Any], good: float) -> str:
    """How the detector does on its own training scenes: not fitted, over-fitted, or alike."""
    train, test = r["train_AP50"], r["AP50"]
    if train < good:
        return f"AP50 {train:.3f} on its own training scenes: it has not fit them, the budget limits it"
    if train - test > 0.05:
        return f"AP50 {train:.3f} on its own training scenes, {train - test:.3f} above the test: it over-fits"
    return f"AP50 {train:.3f} on its own training scenes: no over-fitting"


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "A Transformer detects objects as a set: learned queries, bipartite matching, no anchors and no "
        "non-maximum suppression (DETR). DETR's queries converge slowly; a locality prior on where each "
        "query looks speeds it up. Whether a local-attention backbone serves it as well as a CNN is this "
        "project's question."
    )
    cnn, sasa, plain = _find(m, "CNN", True), _find(m, "attention", True), _find(m, "CNN", False)
    assert cnn is not None and sasa is not None
    epochs = f"{m['epochs']} epoch{'s' * (m['epochs'] > 1)}"
    parts = [
        f"Each detector trained {epochs} on {m['n_train']:,} generated 64×64 scenes (batch 8, "
        f"{cnn['steps']} steps) from a backbone pre-trained on {m['pretrain_images']:,} single shapes, and "
        f"was scored on {m['n_test']} held-out scenes with COCO's AP."
    ]
    for r in (cnn, sasa):
        verdict = "finds most objects" if r["AP50"] >= m["good_ap50"] else "misses many objects"
        parts.append(
            f"{r['detector']}: {_scores(r)} ({verdict}; {_fit(r, m['good_ap50'])}), {r['params']:,} "
            f"parameters, {r['macs'] / 1e6:.1f} M multiply-adds per image, {r['train_images_per_s']:.0f} "
            "training images/s."
        )
    lead = cnn["AP50"] - sasa["AP50"]
    ratio = cnn["train_images_per_s"] / max(sasa["train_images_per_s"], 1e-9)
    behind = min((cnn, sasa), key=lambda r: r["AP50"])
    parts.append(
        (f"The CNN backbone leads by {lead:.3f} AP50" if lead > 0.02 else
         f"The attention backbone leads by {-lead:.3f} AP50" if lead < -0.02 else
         "The two backbones are level (within 0.02 AP50)")
        + f" at the same epochs, and the CNN detector trains {ratio:.1f}× as many images per second as the "
        "attention one (one seed: a difference of a few points is within what another seed could change)."
    )  # fmt: skip
    if abs(lead) > 0.02 and behind["train_AP50"] < m["good_ap50"]:
        parts.append(
            f"The {behind['backbone']} detector has not fit its own training scenes either, so the gap "
            f"measures what each backbone learns in {epochs}, not what each could reach."
        )
    if plain is not None:
        gain = cnn["AP50"] - plain["AP50"]
        parts.append(
            f"With DETR's own queries the same CNN detector reaches {_scores(plain)} (training AP50 "
            f"{plain['train_AP50']:.3f}): the spatial prior is worth {gain:+.3f} AP50 at this budget"
            + (", and without it DETR has not yet learned to detect: the run measures its slow start, "
               "not what it could reach with DETR's hundreds of epochs." if plain["AP50"] < 0.1 else ".")
        )  # fmt: skip
    text = (
        " ".join(parts)
        + f" ({m['threads']} thread{'s' * (m['threads'] > 1)} in this process; the runs one each.)"
    )
    if m["quick"]:
        text += " Quick mode: a smoke test of the pipeline, too small a budget to judge the claim."
    figures = [
        (
            "detection_boxes.png",
            "Test scenes: true boxes (green) and each detector's predictions (red, dashed).",
        ),
        ("detection_attention.png", "The CNN detector's cross-attention for its most confident queries."),
    ]
    tables = [
        (
            "detection.csv",
            "Each detector: COCO AP on the test scenes, AP50 on 500 training scenes, size, cost, speed.",
        )
    ]
    return Description(claim, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    return run(folder, budget=ctx.budget.detr, seed=ctx.seed, quick=ctx.budget.quick)


SECTION = register_section(
    Section("detection", "Transformers beyond classification: DETR", _run, plot, describe)
)
