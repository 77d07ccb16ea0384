"""Operators: the DWNet property table, measured with autograd, and the operator benchmark.

Han et al. 2022 (DWNet) place local attention beside depth-wise convolution: both aggregate each channel
over a local window without mixing channels; they differ in what their weights are shared across and
in whether the weights depend on the input. `convattn.analysis.properties` measures each property of
every mixer, and `convattn.analysis.bench` times every operator against a 7×7 depth-wise conv.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from convattn.analysis.bench import RATIO_NOISE_LIMIT, BenchConfig, run_bench
from convattn.analysis.properties import property_table
from convattn.study.section import Description, Section, register_section
from convattn.utils.plotting import bar_plot
from convattn.utils.records import read_csv, write_csv

__all__ = ["SECTION", "describe", "plot", "run"]


def plot(out_dir: Path) -> None:
    """Draw bench_ratios.png from bench.csv: forward+backward time of every timed operator / dwconv."""
    timed = [r for r in read_csv(out_dir / "bench.csv") if r["fwdbwd_ratio_to_dwconv"] not in ("", "nan")]
    bar_plot(
        [r["op"] for r in timed],
        [float(r["fwdbwd_ratio_to_dwconv"]) for r in timed],
        out_dir / "bench_ratios.png",
        ylabel="forward+backward time / 7×7 depth-wise conv (channels_last), log scale",
        log=True,
    )


def run(out_dir: Path, cfg: BenchConfig) -> dict[str, Any]:
    """The DWNet property table, measured, and a benchmark of the operators (ratios to a 7×7 dwconv).

    Writes properties.csv, bench.csv and bench_ratios.png. The benchmark is `convattn bench` with `cfg`
    (the study: 32×32, batch 8; quick: 16×16, batch 2), operators alternating, medians over the repeats.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    props = [p.row() for p in property_table()]
    write_csv(out_dir / "properties.csv", props)
    rows = run_bench(cfg, log=lambda s: None)
    keep = ("op", "size", "fwd_ms", "fwdbwd_ms", "fwd_ratio_to_dwconv", "fwdbwd_ratio_to_dwconv",
            "fwdbwd_ratio_noise", "ratio_trusted", "peak_train_mib", "macs", "repeats",
            "threads")  # fmt: skip
    table = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keep} for r in rows
    ]
    write_csv(out_dir / "bench.csv", table)
    plot(out_dir)
    ratio = {r["op"]: r["fwdbwd_ratio_to_dwconv"] for r in table}
    noisy = [r["op"] for r in table if not r["ratio_trusted"]]
    return {
        "properties": props,
        "bench": table,
        "size": cfg.sizes[0],
        "batch": cfg.batch,
        "repeats": cfg.repeats,
        "na2d_k7_fwdbwd_ratio": ratio.get("na2d_k7"),
        "window_w7_fwdbwd_ratio": ratio.get("window_w7"),
        "unfold_fwdbwd_ratio": ratio.get("unfold_local_k7"),
        "noisy_ratios": noisy,
        "threads": torch.get_num_threads(),
    }


def _noise_sentence(noisy: list[str]) -> str:
    """Which ratios the machine's noise makes untrustworthy (paired ratios' IQR above the limit)."""
    limit = f"{RATIO_NOISE_LIMIT:.0%} of the ratio"
    if not noisy:
        return f"Every ratio is trustworthy: the spread of its per-repeat ratios is within {limit}."
    return (
        f"Not trustworthy in this run (the spread of the per-repeat ratios exceeds {limit}): "
        + ", ".join(noisy)
        + "."
    )


def describe(m: dict[str, Any]) -> Description:
    """The claim, and the paragraph from this run's numbers."""
    claim = (
        "Han et al. 2022 (DWNet): local attention is a channel-wise, sparsely connected aggregation like a "
        "depth-wise conv; they differ in weight sharing (across a head's channels vs across positions) and "
        "in dynamic weights."
    )
    rows = {r["mixer"]: r for r in m["properties"]}
    dw, sasa = rows["dwconv"], rows["sasa"]
    holds = (
        not dw["channel_mixing"] and not sasa["channel_mixing"] and dw["support"].startswith("local")
        and sasa["support"].startswith("local") and dw["shared_across_positions"]
        and sasa["shared_across_channels"] and sasa["dynamic"] and not dw["dynamic"]
    )  # fmt: skip
    text = (
        f"{'Supported' if holds else 'Not supported'} by the measured table: depth-wise conv is "
        f"{dw['support']}, without channel mixing, shared across positions, static; SASA is "
        f"{sasa['support']}, without channel mixing, shared across a head's channels, dynamic. "
        f"Speed ({m['size']}×{m['size']}, batch {m['batch']}, medians of {m['repeats']}, "
        f"{m['threads']} threads), "
        "forward+backward relative to a 7×7 depth-wise conv: neighbourhood attention k = 7 "
        f"{m['na2d_k7_fwdbwd_ratio']:.1f}×, window attention {m['window_w7_fwdbwd_ratio']:.1f}×, the unfold "
        f"implementation of common ports {m['unfold_fwdbwd_ratio']:.0f}×. "
        + _noise_sentence(m.get("noisy_ratios", []))
    )
    figures = [
        ("bench_ratios.png", "Forward+backward time of every operator relative to a 7×7 depth-wise conv.")
    ]
    tables = [
        ("properties.csv", "The DWNet property table, measured with autograd on each operator."),
        ("bench.csv", "Operator benchmark: medians, ratios to the depth-wise conv, peak memory, MACs."),
    ]
    return Description(claim, text, figures, tables)


SECTION = register_section(
    Section(
        "operators",
        "Operators: properties and speed",
        lambda d, ctx: run(d, ctx.budget.bench),
        plot,
        describe,
    )
)
