"""Does attention learn convolution? Head centres of attention-only nets, at initialisation and trained.

Cordonnier et al. 2020 (§4, Figs. 3–5) train an attention-only network with the quadratic encoding
(eq. 9) and find heads whose centres Δ^(h) spread around the query like the taps of a K×K convolution,
narrow in the early layers; with learned relative encodings the heads attend to localised patterns
around the query. Here `attention_net_small` (hidden 32, 2 layers, 9 heads) is trained where a 3×3 grid
means what it means in the paper: on `digits32`, the digits enlarged to 32×32, which its 2×2
space-to-depth turns into 16×16 token maps (each original pixel spans 2×2 tokens), with the quadratic
encoding. Every head of every layer is measured in the run's own initial model (re-created exactly as
the trainer seeds it) and in the trained one. The section measures any encoding of `ENCODINGS` (the
learned relative one's centres are empirical: where its attention falls); the study runs the quadratic
one alone, because at this budget the learned relative net reached only 77% test accuracy (30 epochs,
seed 0), too little for its heads to say what a trained net does, and a second net doubles the cost.

The recipe (`Recipe`, one rate, no search: this section measures heads, it compares no models) gives
the quadratic centres Δ `position_lr_scale` times the learning rate (their spreads keep the shared
one). AdamW moves a parameter by about its rate per step, so at the shared rate a centre could travel
only ~Σ lr tokens (about 1 in the whole run); with the scale it can travel several, and whether the
heads form a grid is a finding.
The section reports that bound, Σ over the steps of the centres' rate, beside the measured travel.

Measures of a head (`convattn.analysis.centres`): for the quadratic net, the parameters Δ and σ =
√(tr Σ / 2), the per-axis standard deviation of the Gaussian score; for both, the empirical centre and
spread of the attention over a batch of test images. A layer's grid-likeness is the mean distance of
its centres to the 3×3 conv offsets under the best one-to-one assignment; the centres are Δ for the
quadratic net and the empirical centres for the learned relative one. References: the initial model of
the same run, and random centres drawn as the quadratic initialisation draws them (N(0, 2²) per axis).

Files: centres.csv (one row per model, stage, layer and head), attention_maps.csv (every head's
attention of the query pixel `(H // 2, W // 2)` over the whole map), grid_likeness.csv (one row per
model, stage and layer, with the references); `plot(folder)` draws every PNG from these CSVs alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from convattn.analysis.centres import (
    GRID_TOL,
    MARGIN,
    empirical_centres,
    grid_likeness,
    interior_queries,
    quadratic_params,
    query_maps,
    random_grid_reference,
    uniform_spread,
)
from convattn.analysis.viz import plot_stage_centres, plot_stage_maps
from convattn.data import load
from convattn.layers.mhsa2d import MultiHeadSelfAttention2d
from convattn.models.attention_net import AttentionLayer, AttentionNet
from convattn.study.contest import Contender, Recipe
from convattn.study.runs import run_folder, run_training, run_trainings
from convattn.study.section import Context, Description, Section, register_section
from convattn.train import TrainConfig, build_model, load_weights, lr_at
from convattn.utils.plotting import plt, save_figure
from convattn.utils.records import read_csv, write_csv

__all__ = ["SECTION", "describe", "initial_model", "plot", "run"]

MODEL = "attention_net_small"
ENCODINGS = ("quadratic",)
MOVE_TOL = 0.05  # map steps: smaller changes of a mean distance or spread count as "unchanged"
STAGES = ("init", "trained")
CSV_FILES = ("centres.csv", "attention_maps.csv", "grid_likeness.csv")


# -- models and measurements ------------------------------------------------------------------------


def initial_model(cfg: TrainConfig) -> nn.Module:
    """The model `train(cfg)` starts from: same data shapes, `torch.manual_seed(cfg.seed)`, same build.

    The global RNG state is restored afterwards, so calling this has no side effects.
    """
    train_set = load(cfg.data, "train", seed=cfg.data_seed, n_train=cfg.n_train or None, holdout=cfg.holdout)
    with torch.random.fork_rng(devices=[]):
        return build_model(cfg, train_set)


def _config(folder: Path, encoding: str, recipe: Recipe, seed: int) -> TrainConfig:
    """The run of one encoding (one thread: the runs train side by side in worker processes)."""
    out = folder / "runs" / f"{MODEL}-{encoding}-e{recipe.epochs}-s{seed}"
    net = Contender(encoding, MODEL, {"encoding": encoding})
    return recipe.config(net, out, lr=recipe.lrs[0], seed=seed, search=False)


def _centre_rows(layer: MultiHeadSelfAttention2d, x: Tensor, tag: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per head of `layer` on inputs x (B, C, H, W): its centre, width, empirical centre, spread."""
    queries = interior_queries(*x.shape[-2:])
    emp, spread = empirical_centres(query_maps(layer, x, queries), queries)
    quadratic = layer.encoding.startswith("quadratic")
    # Without Δ the drawn circle is the empirical per-axis deviation, comparable to the quadratic σ.
    centre, width = quadratic_params(layer) if quadratic else (emp, spread / math.sqrt(2))
    return [
        {
            **tag,
            "head": h,
            "centre_source": "parameter" if quadratic else "empirical",
            "centre_row": round(float(centre[h, 0]), 5),
            "centre_col": round(float(centre[h, 1]), 5),
            "width": round(float(width[h]), 5),
            "empirical_row": round(float(emp[h, 0]), 5),
            "empirical_col": round(float(emp[h, 1]), 5),
            "empirical_spread": round(float(spread[h]), 5),
        }
        for h in range(layer.num_heads)
    ]


def _map_rows(layer: MultiHeadSelfAttention2d, x: Tensor, tag: dict[str, Any]) -> list[dict[str, Any]]:
    """The attention of the centre pixel (H // 2, W // 2), one row per head and key pixel."""
    H, W = x.shape[-2:]
    qr, qc = H // 2, W // 2
    probs = query_maps(layer, x, [(qr, qc)])[0]  # (heads, H, W)
    return [
        {**tag, "head": h, "query_row": qr, "query_col": qc, "key_row": i, "key_col": j,
         "prob": round(float(probs[h, i, j]), 6)}
        for h in range(layer.num_heads)
        for i in range(H)
        for j in range(W)
    ]  # fmt: skip


@torch.no_grad()
def _measure(model: nn.Module, x: Tensor, encoding: str, stage: str) -> tuple[list[dict], list[dict]]:
    """(centre rows, attention-map rows) of every head of every layer of `model` on images x."""
    if not isinstance(model, AttentionNet):
        raise TypeError(f"expected an AttentionNet, got {type(model).__name__}")
    model.eval()
    feats = model.features(x)  # the input of every attention layer, (B, hidden, H, W)
    centre_rows: list[dict] = []
    map_rows: list[dict] = []
    for index, block in enumerate(model.layers):
        layer = cast(AttentionLayer, block).attention
        tag = {"model": MODEL, "encoding": encoding, "stage": stage, "layer": index}
        centre_rows += _centre_rows(layer, feats[index], tag)
        map_rows += _map_rows(layer, feats[index], tag)
    return centre_rows, map_rows


def _grid_rows(centre_rows: list[dict], reference: tuple[float, float], uniform: float) -> list[dict]:
    """One grid-likeness row per (model, stage, layer), from the centre rows."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in centre_rows:
        groups.setdefault((r["encoding"], r["stage"], int(r["layer"])), []).append(r)
    rows = []
    for (encoding, stage, layer), heads in groups.items():
        fit = grid_likeness([[float(r["centre_row"]), float(r["centre_col"])] for r in heads])
        emp = grid_likeness([[float(r["empirical_row"]), float(r["empirical_col"])] for r in heads])
        rows.append({
            "model": MODEL, "encoding": encoding, "stage": stage, "layer": layer,
            "centre_source": heads[0]["centre_source"], "heads": len(heads),
            "mean_distance": round(fit.mean_distance, 5), "fraction_within": round(fit.fraction_within, 5),
            "mean_distance_empirical": round(emp.mean_distance, 5),
            "fraction_within_empirical": round(emp.fraction_within, 5),
            "mean_width": round(float(np.mean([float(r["width"]) for r in heads])), 5),
            "mean_empirical_spread": round(float(np.mean([float(r["empirical_spread"]) for r in heads])), 5),
            "uniform_spread": round(uniform, 5),
            "random_mean_distance": round(reference[0], 5), "random_p05_distance": round(reference[1], 5),
        })  # fmt: skip
    return rows


def _shift(centre_rows: list[dict], encoding: str, layer: int | None = None) -> list[float]:
    """How far each head's centre moved between initialisation and training (tokens), in one layer or all."""
    at = {
        (r["stage"], int(r["layer"]), r["head"]): (r["centre_row"], r["centre_col"])
        for r in centre_rows
        if r["encoding"] == encoding and (layer is None or int(r["layer"]) == layer)
    }
    return [math.dist(c, at["init", i, head]) for (stage, i, head), c in at.items() if stage == "trained"]


def _summary(grid_rows: list[dict], centre_rows: list[dict], encoding: str, acc: float) -> dict[str, Any]:
    """The numbers `describe` needs for one model: per-layer fits and their means init vs trained."""
    mine = [r for r in grid_rows if r["encoding"] == encoding]
    out: dict[str, Any] = {"test_acc": acc, "centre_source": mine[0]["centre_source"], "layers": mine}
    for stage in STAGES:
        rows = [r for r in mine if r["stage"] == stage]
        out[f"mean_distance_{stage}"] = float(np.mean([r["mean_distance"] for r in rows]))
        out[f"fraction_within_{stage}"] = float(np.mean([r["fraction_within"] for r in rows]))
        out[f"mean_spread_{stage}"] = float(np.mean([r["mean_empirical_spread"] for r in rows]))
        out[f"mean_width_{stage}"] = float(np.mean([r["mean_width"] for r in rows]))
        out[f"distance_per_layer_{stage}"] = [r["mean_distance"] for r in rows]
        out[f"width_per_layer_{stage}"] = [r["mean_width"] for r in rows]
        out[f"spread_per_layer_{stage}"] = [r["mean_empirical_spread"] for r in rows]
    shifts = _shift(centre_rows, encoding)
    out["centre_shift_mean"], out["centre_shift_max"] = float(np.mean(shifts)), float(np.max(shifts))
    layers = sorted({int(r["layer"]) for r in mine})
    out["centre_shift_per_layer"] = [float(np.mean(_shift(centre_rows, encoding, i))) for i in layers]
    d_init, d_trained = out["mean_distance_init"], out["mean_distance_trained"]
    out["verdict"] = (
        "grid" if d_trained <= GRID_TOL
        else "closer" if d_init - d_trained > MOVE_TOL
        else "farther" if d_trained - d_init > MOVE_TOL
        else "unchanged"
    )  # fmt: skip
    return out


def _train_and_measure(
    cfg: TrainConfig, x: Tensor, centre_rows: list[dict], map_rows: list[dict]
) -> tuple[float, int, float]:
    """Train (or reuse) the run `cfg`, append its initial and trained heads' rows; (test accuracy,
    steps, Σ over the steps of the centres' learning rate)."""
    history = run_training(cfg)
    # AdamW moves a parameter by about its learning rate per step: the sum bounds a centre's travel.
    steps = int(history[-1]["step"])
    lr_sum = cfg.position_lr_scale * sum(lr_at(i, steps, cfg) for i in range(steps))
    trained, _ = load_weights(run_folder(cfg))
    encoding = str(cfg.model_options["encoding"])
    for stage, model in zip(STAGES, (initial_model(cfg), trained), strict=True):
        c, m = _measure(model, x, encoding, stage)
        centre_rows += c
        map_rows += m
    return float(history[-1]["test_acc"]), steps, lr_sum


def run(folder: Path, *, recipe: Recipe, seed: int, test_images: int, quick: bool = False) -> dict[str, Any]:
    """Train both nets (or reuse their run folders), measure every head, write the CSVs and PNGs.

    Args:
        folder: the section's folder; training runs live in folder/"runs".
        recipe: data, epochs, the one learning rate (`recipe.lrs[0]`) and the centres' rate scale.
        seed: seed of the training runs (and so of the initial models).
        test_images: how many test images the attention is averaged over.
        quick: a smoke-test budget (recorded in the metrics).

    Returns:
        JSON-serialisable metrics: per model the per-layer grid-likeness, its means at init and trained,
        the centre shift and a verdict; the random and uniform references; settings.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed=!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    x = load(recipe.data, "test").tensors()[0][:test_images]  # (N, C, H, W)
    centre_rows: list[dict] = []
    map_rows: list[dict] = []
    accs = {}
    run_trainings([_config(folder, e, recipe, seed) for e in ENCODINGS])  # side by side
    for encoding in ENCODINGS:
        accs[encoding], steps, lr_sum = _train_and_measure(
            _config(folder, encoding, recipe, seed), x, centre_rows, map_rows
        )
    heads = sum(1 for r in centre_rows if r["stage"] == "init" and r["layer"] == 0) // len(ENCODINGS)
    reference = random_grid_reference(heads, seed=seed)
    uniform = uniform_spread(1 + max(r["key_row"] for r in map_rows), 1 + max(r["key_col"] for r in map_rows))
    grid_rows = _grid_rows(centre_rows, reference, uniform)
    for name, rows in zip(CSV_FILES, (centre_rows, map_rows, grid_rows), strict=True):
        write_csv(folder / name, rows)
    plot(folder)
    return {
        "model": MODEL,
        "data": recipe.data,
        "encodings": list(ENCODINGS),
        "epochs": recipe.epochs,
        "lr": recipe.lrs[0],
        "position_lr_scale": recipe.position_lr_scale,
        "map_size": 1 + max(r["key_row"] for r in map_rows),
        "steps": steps,
        "lr_sum": lr_sum,
        "seed": seed,
        "quick": quick,
        "test_images": len(x),
        "heads": heads,
        "margin": MARGIN,
        "grid_tol": GRID_TOL,
        "random_mean_distance": reference[0],
        "random_p05_distance": reference[1],
        "uniform_spread": uniform,
        "collapsed_distance": grid_likeness(np.zeros((heads, 2))).mean_distance,
        "models": {e: _summary(grid_rows, centre_rows, e, accs[e]) for e in ENCODINGS},
        "figures": _figure_names(),
        "tables": list(CSV_FILES),
        "threads": torch.get_num_threads(),
    }


# -- figures, from the CSVs alone -------------------------------------------------------------------


def _figure_names(encodings: Sequence[str] = ENCODINGS) -> list[str]:
    names = [f"{kind}_{e}.png" for e in encodings for kind in ("centres", "attention")]
    return [*names, "grid_likeness.png"]


def _plot_grid(rows: list[dict[str, str]], path: Path) -> None:
    """Grid-likeness per layer, init vs trained, against random centres and the on-grid tolerance."""
    encodings = list(dict.fromkeys(r["encoding"] for r in rows))
    fig, axes = plt.subplots(
        1, len(encodings), figsize=(3.3 * len(encodings), 2.9), sharey=True, squeeze=False
    )
    for ax, encoding in zip(axes[0], encodings, strict=True):
        mine = [r for r in rows if r["encoding"] == encoding]
        layers = sorted({int(r["layer"]) for r in mine})
        pos = np.arange(len(layers))
        for k, (stage, colour) in enumerate(zip(STAGES, ("#bbbbbb", "#4c78a8"), strict=True)):
            d = {int(r["layer"]): float(r["mean_distance"]) for r in mine if r["stage"] == stage}
            ax.bar(pos + (k - 0.5) * 0.38, [d[layer] for layer in layers], 0.38, color=colour, label=stage)
        ax.axhline(float(mine[0]["random_mean_distance"]), ls="--", color="#d62728", lw=0.9,
                   label="random centres (mean)")  # fmt: skip
        ax.axhline(float(mine[0]["random_p05_distance"]), ls=":", color="#d62728", lw=0.9,
                   label="random centres (5th pct.)")  # fmt: skip
        ax.axhline(GRID_TOL, ls="-.", color="#2ca02c", lw=0.9, label=f"on-grid tolerance {GRID_TOL}")
        ax.set_xticks(pos, [f"layer {layer}" for layer in layers], fontsize=7)
        ax.set_title(f"{encoding} ({mine[0]['centre_source']} centres)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("mean distance to the 3×3 grid (map steps)", fontsize=7)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)


def plot(folder: Path) -> None:
    """Draw every PNG of the section from the CSVs in `folder` (no model, no training; deterministic)."""
    folder = Path(folder)
    centres, maps, grid = (read_csv(folder / name) for name in CSV_FILES)
    for encoding in dict.fromkeys(r["encoding"] for r in centres):
        plot_stage_centres([r for r in centres if r["encoding"] == encoding], STAGES, encoding,
                      folder / f"centres_{encoding}.png")  # fmt: skip
        plot_stage_maps([r for r in maps if r["encoding"] == encoding], STAGES, encoding,
                   folder / f"attention_{encoding}.png")  # fmt: skip
    _plot_grid(grid, folder / "grid_likeness.png")


# -- the study's paragraph --------------------------------------------------------------------------

CLAIM = (
    "Cordonnier et al. (2020, §4, Figs. 3–5): an attention-only network with the quadratic encoding "
    "learns heads whose centres Δ spread out around the query like the taps of a K×K convolution (with "
    "small widths in the early layers)."
)


def _model_sentence(name: str, m: dict[str, Any], metrics: dict[str, Any]) -> str:
    d0, d1 = m["mean_distance_init"], m["mean_distance_trained"]
    where = {
        "grid": "which is on the grid",
        "closer": f"closer to a grid than at initialisation by {d0 - d1:.2f} but still off it",
        "farther": f"farther from a grid than at initialisation by {d1 - d0:.2f}",
        "unchanged": "no closer to a grid than at initialisation",
    }[m["verdict"]]

    def listed(key: str) -> str:
        return ", ".join(f"{v:.2f}" for v in m[key])

    per_layer = listed("distance_per_layer_trained")
    if m["centre_source"] == "parameter":
        widths = (
            f"; the widths σ per layer went from {listed('width_per_layer_init')} to "
            f"{listed('width_per_layer_trained')}"
        )
    else:
        widths = ""
    s0, s1 = listed("spread_per_layer_init"), listed("spread_per_layer_trained")
    return (
        f"{name} ({m['centre_source']} centres, test accuracy {m['test_acc']:.1%}): the heads lie "
        f"{d0:.2f} from their best-matched 3×3 offsets at initialisation and {d1:.2f} trained "
        f"(per layer {per_layer}; {m['fraction_within_trained']:.0%} of heads within "
        f"{metrics['grid_tol']}), "
        f"{where}; the centres moved {m['centre_shift_mean']:.2f} on average (per layer "
        f"{listed('centre_shift_per_layer')}; at most {m['centre_shift_max']:.2f}){widths}; the "
        f"attention's spread per layer went from {s0} to {s1}."
    )


def describe(metrics: dict[str, Any]) -> Description:
    """The claim, the paragraph from this run's numbers, the figures and tables of the section."""
    keys = ("models", "epochs", "map_size", "random_mean_distance", "uniform_spread")
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"metrics lack {missing}: pass the dict run() returned")
    models = metrics["models"]
    names = {"quadratic": "Quadratic encoding", "relative": "Learned relative encoding"}
    quad, rel = models.get("quadratic"), models.get("relative")
    if quad is None or quad["verdict"] in ("unchanged", "farther"):
        verdict = "This run does not support the claim: the quadratic heads did not move towards a conv grid."
    elif quad["verdict"] == "closer":
        verdict = (
            "This run supports the claim only in its direction: the quadratic heads moved towards a grid."
        )
    else:
        verdict = "This run supports the claim: the quadratic heads sit on a 3×3 conv grid."
    if rel is not None:
        s0, s1, u = rel["mean_spread_init"], rel["mean_spread_trained"], metrics["uniform_spread"]
        localised = "became more" if s1 < s0 - MOVE_TOL else "did not become more"
        verdict += (
            f" The learned relative heads {localised} localised than at initialisation (mean spread "
            f"{s0:.2f} -> {s1:.2f}, {s1 / u:.0%} of uniform attention's)."
        )
    n = metrics["map_size"]
    text = (
        f"{'One' if len(models) == 1 else len(models)} {metrics['model']} "
        f"net{'s' if len(models) > 1 else ''} "
        f"({metrics['heads']} heads per layer, {n}×{n} token maps) trained "
        f"{metrics['epochs']} epoch{'s' if metrics['epochs'] != 1 else ''} on {metrics['data']} with "
        f"AdamW at learning rate {metrics['lr']:g}, the quadratic centres at "
        f"{metrics['position_lr_scale']:g}× that rate. Distances are in steps of the token map. A "
        "layer's grid-likeness is the mean distance of its head centres to the 3×3 offsets {-1, 0, 1}² "
        "under the best one-to-one assignment (0 = a 3×3 conv), "
        f"against {metrics['random_mean_distance']:.2f} for random centres drawn like the quadratic "
        f"initialisation (5th percentile {metrics['random_p05_distance']:.2f}) and "
        f"{metrics['collapsed_distance']:.2f} for all centres on the query; spreads are RMS "
        f"distances of the attended offsets from the head's centre (uniform attention: "
        f"{metrics['uniform_spread']:.2f}). "
        + " ".join(_model_sentence(names.get(e, e), m, metrics) for e, m in models.items())
        + f" {verdict}"
        + " For scale: AdamW moves a parameter by about its learning rate per step, and the centres' "
        f"rates over the {metrics['steps']} steps sum to {metrics['lr_sum']:.1f}, about the farthest a "
        "centre could travel; the paper trained 300 CIFAR-10 epochs with SGD."
    )
    figures = []
    for e in models:
        figures += [
            (
                f"centres_{e}.png",
                f"{names.get(e, e)}: head centres and 1-σ circles per layer, init and trained.",
            ),
            (f"attention_{e}.png", f"{names.get(e, e)}: attention of the centre pixel per head and layer."),
        ]
    figures.append(("grid_likeness.png", "Grid-likeness per layer, init vs trained, against random centres."))
    tables = [
        ("grid_likeness.csv", "Grid-likeness and spread per model, stage and layer, with references."),
    ]
    return Description(CLAIM, text, figures, tables)


def _run(folder: Path, ctx: Context) -> dict[str, Any]:
    b = ctx.budget
    return run(folder, recipe=b.learns_conv, seed=ctx.seed, test_images=b.centre_images, quick=b.quick)


SECTION = register_section(Section("learns_conv", "Does attention learn convolution?", _run, plot, describe))
