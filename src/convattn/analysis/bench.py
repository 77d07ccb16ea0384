"""Operator benchmark: every mixer and its peers, timed side by side in one process.

For each operator: forward and forward+backward medians with their spread (interquartile range) over
repeated runs, the operators alternating so that machine noise spreads evenly; peak extra resident
memory of a training step; multiply-adds (attention included) and the achieved GFLOP/s beside the
machine's matmul GFLOP/s (the roofline). Ratios are to the depth-wise 7×7 convolution in channels_last
measured in the same run. Benchmarks are not tests: results go to CSV with the torch version, thread
count and CPU.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.analysis.flops import count_macs
from convattn.layers.dynamic import image_dwconv2d, pixel_dwconv2d
from convattn.layers.mixers import create_mixer
from convattn.layers.neighborhood import neighborhood_attention2d
from convattn.layers.window import window_attention2d
from convattn.utils.environment import environment
from convattn.utils.records import write_csv

__all__ = [
    "RATIO_NOISE_LIMIT",
    "TARGETS",
    "BenchConfig",
    "Target",
    "format_targets",
    "inference_rate",
    "paired_ratios",
    "run_bench",
    "target_rows",
    "targets_path",
    "training_path",
    "training_rate",
    "unfold_local_attention",
]

BASELINE = "dwconv7_channels_last"
MODULE_BASELINE = "dwconv"  # the depth-wise conv mixer module, the peer of the other mixer modules
# flex_attention runs eagerly on CPU, scoring every pair of pixels: measured up to 32×32 only.
FLEX_MAX_PIXELS = 1024


def unfold_local_attention(q: Tensor, k: Tensor, v: Tensor, kernel_size: int) -> Tensor:
    """Local attention as the popular SASA port computes it: k² copies of keys and values via unfold.

    q, k, v: (B, heads, d, H, W) -> (B, heads, d, H, W); keys outside the image are zeros that take part.
    """
    B, h, d, H, W = q.shape
    r = kernel_size // 2
    unf = lambda x: F.unfold(x.reshape(B, h * d, H, W), kernel_size, padding=r)  # noqa: E731 (B, h·d·k², T)
    k_unf = unf(k).reshape(B, h, d, kernel_size**2, H * W)  # (B, h, d, k², T)
    v_unf = unf(v).reshape(B, h, d, kernel_size**2, H * W)
    scores = (q.reshape(B, h, d, 1, H * W) * k_unf).sum(2) * d**-0.5  # (B, h, k², T)
    probs = scores.softmax(dim=2)
    return (probs[:, :, None] * v_unf).sum(3).reshape(B, h, d, H, W)


INFERENCE_REPEATS = 5


def device_name(device: str) -> str:
    """The device as a report names it."""
    return torch.cuda.get_device_name() if device == "cuda" else "the CPU"


@torch.no_grad()
def inference_rate(model: torch.nn.Module, images: torch.Tensor, repeats: int = INFERENCE_REPEATS) -> float:
    """Images per second of eval-mode forward passes over `images` on their device (median of `repeats`)."""
    model.eval()
    model(images)  # warm-up
    times = []
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


def training_rate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, steps: int = INFERENCE_REPEATS
) -> float:
    """Images per second of AdamW training steps (forward, backward, update) on one batch, median of
    `steps` after a warm-up step. `model` is trained in place: pass a fresh one."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=images.device.type in ("cpu", "cuda"))
    times = []
    for i in range(steps + 1):
        if images.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if images.is_cuda:
            torch.cuda.synchronize()
        if i:  # the first step is the warm-up
            times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: batch, channels (as heads × head width), map sizes and repetitions."""

    batch: int = 8
    heads: int = 4
    head_dim: int = 16
    sizes: tuple[int, ...] = (32, 56)
    repeats: int = 15
    warmup: int = 3
    mixers: tuple[str, ...] = ("conv", "dwconv", "dynamic_dwconv", "local_mlp", "sasa", "window", "mhsa")
    out: Path | None = None
    step_batch: int = 64  # the attention nets' training step, before and after (`step_speed`)
    step_repeats: int = 15

    @classmethod
    def quick(cls, out: Path | None = None) -> BenchConfig:
        return cls(batch=2, sizes=(16,), repeats=5, warmup=1, out=out, step_batch=8, step_repeats=3)


def _malloc_mode(peaks: bool) -> None:
    """Set glibc's thresholds for timing (`peaks=False`) or for peak-memory readings (`peaks=True`).

    For peaks, blocks of 1 MiB and more are mmapped and handed back at once, so resident memory tracks
    live tensors: by default glibc raises its mmap threshold after the first large free and keeps later
    blocks in the heap, which would hide every peak after the first. For timing, the thresholds are
    those a long-running process settles at by default (32 MiB), so operators are not charged for
    page faults a training loop would not see. No-op where glibc is absent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        threshold = 1 << 20 if peaks else 32 << 20
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, threshold if peaks else 2 * threshold)  # M_TRIM_THRESHOLD
        if peaks:
            libc.malloc_trim(0)  # hand back what the timing phase left in the heap
    except (OSError, AttributeError):
        pass


def _peak_mib(fn: Callable[[], Any]) -> float:
    """Peak extra resident memory of fn() in MiB (Linux: the VmHWM mark is reset first), NaN elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kib("VmRSS:")
        fn()
        return (_status_kib("VmHWM:") - before) / 1024
    except OSError:
        fn()
        return float("nan")


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Achieved GFLOP/s of an n×n float32 matmul on this machine: the roofline for the table."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


_Ops = dict[str, tuple[Callable[[bool], Any], Callable[[], int]]]  # name -> (step(train), macs())


def _stepper(fn: Callable[[], Tensor]) -> Callable[[bool], None]:
    """step(train): one forward of `fn`, and its backward when `train`."""

    def step(train: bool) -> None:
        if train:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()

    return step


def _module_ops(cfg: BenchConfig, size: int) -> _Ops:
    """The baseline depth-wise conv (channels_last) and every mixer of `cfg.mixers`, as modules."""
    B, h, C = cfg.batch, cfg.heads, cfg.heads * cfg.head_dim
    x_cl = torch.randn(B, C, size, size).to(memory_format=torch.channels_last).requires_grad_()
    dw = nn.Conv2d(C, C, 7, padding=3, groups=C, bias=False)
    dw.weight.data = dw.weight.data.to(memory_format=torch.channels_last)
    modules: dict[str, tuple[nn.Module, Tensor]] = {BASELINE: (dw, x_cl)}
    x = torch.randn(B, C, size, size, requires_grad=True)
    for name in cfg.mixers:
        options: dict[str, Any] = {"num_heads": h} if name in ("local_mlp", "sasa", "window", "mhsa") else {}
        modules[name] = (create_mixer(name, C, **options), x)
    return {
        name: (_stepper(partial(m, x)), partial(count_macs, m, x.detach()))
        for name, (m, x) in modules.items()
    }


def _function_ops(cfg: BenchConfig, size: int) -> _Ops:
    """The bare operators (local attention, window attention, dynamic convs) and their peers."""
    B, h, d = cfg.batch, cfg.heads, cfg.head_dim
    q, k, v = (torch.randn(B, size, size, h, d, requires_grad=True) for _ in range(3))
    x_cl = torch.randn(B, h * d, size, size).to(memory_format=torch.channels_last).requires_grad_()
    table = torch.randn(h, 13, 13, requires_grad=True)
    per_image = torch.randn(B, h * d, 7, 7, requires_grad=True)
    per_pixel = torch.randn(B, h, 49, size, size, requires_grad=True)
    calls: dict[str, Callable[[], Tensor]] = {
        "na2d_k3": partial(neighborhood_attention2d, q, k, v, 3),
        "na2d_k7": partial(neighborhood_attention2d, q, k, v, 7),
        "window_w7": partial(window_attention2d, q, k, v, 7, bias=table),
        "window_w7_shifted": partial(window_attention2d, q, k, v, 7, bias=table, shift=3),
        "image_dwconv7": partial(image_dwconv2d, x_cl, per_image),
        "pixel_dwconv7": partial(pixel_dwconv2d, x_cl, per_pixel),
    }
    ops: _Ops = {name: (_stepper(fn), partial(count_macs, fn)) for name, fn in calls.items()}
    local_macs = B * size * size * h * 49 * 2 * d  # q·k and p·v over a 7×7 window
    qu, ku, vu = (torch.randn(B, h, d, size, size, requires_grad=True) for _ in range(3))
    ops["unfold_local_k7"] = (_stepper(partial(unfold_local_attention, qu, ku, vu, 7)), lambda: local_macs)
    qs, ks, vs = (torch.randn(B, h, size * size, d, requires_grad=True) for _ in range(3))
    sdpa = partial(F.scaled_dot_product_attention, qs, ks, vs)
    ops["sdpa_global"] = (_stepper(sdpa), partial(count_macs, sdpa))
    if size * size <= FLEX_MAX_PIXELS:  # flex_attention: forward only on CPU (no CPU backward in torch)
        qd, kd, vd = q.detach(), k.detach(), v.detach()  # flex refuses inputs that require grad on CPU
        flex = partial(neighborhood_attention2d, qd, kd, vd, 7, backend="flex")
        ops["flex_na2d_k7"] = (lambda train: flex(), lambda: local_macs)
    return ops


def _ops(cfg: BenchConfig, size: int) -> _Ops:
    """name -> (step(train), macs()): one forward (and backward when train) of each operator."""
    return {**_module_ops(cfg, size), **_function_ops(cfg, size)}


def _forward_only(name: str) -> bool:
    """flex_attention has no CPU backward: its fwd+bwd and training memory are not measured there."""
    return name.startswith("flex_") and not torch.cuda.is_available()


def _na2d_minimum_mib(cfg: BenchConfig, size: int, name: str) -> float:
    """For local attention: the memory a training step cannot avoid, in MiB (NaN for other operators).

    q, k, v, the output and their four gradients, plus the probabilities and their gradient.
    """
    kernel = {"na2d_k3": 3, "na2d_k7": 7, "unfold_local_k7": 7}.get(name)
    if kernel is None:
        return float("nan")
    pixels = cfg.batch * size * size
    floats = 8 * pixels * cfg.heads * cfg.head_dim + 2 * pixels * cfg.heads * kernel**2
    return floats * 4 / 2**20


def _warm_up(ops: _Ops, repeats: int) -> None:
    for step, _ in ops.values():
        for _ in range(repeats):
            step(False)
            step(True)  # a forward-only operator's step ignores `train`


def _time(step: Callable[[bool], Any], train: bool) -> float:
    t = time.perf_counter()
    step(train)
    return time.perf_counter() - t


def _spread(times: list[float]) -> float:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return q[2] - q[0]


# A ratio to the baseline is trusted when its paired ratios' interquartile range is at most this
# fraction of their median: beyond it, the machine's noise moves the ratio more than a claim can bear.
RATIO_NOISE_LIMIT = 0.2


@dataclass(frozen=True)
class Target:
    """A speed target: `column` of operator `op` at map size `size` at most `limit`."""

    op: str
    column: str
    limit: float
    size: int = 32


# The speed targets the kernels are held to, as ratios measured in one run (operators alternating):
# the bare neighbourhood attention against the bare 7×7 depth-wise conv (channels_last), and the
# attention mixer modules (projections included) against the depth-wise conv mixer module.
TARGETS = (
    Target("na2d_k7", "fwd_ratio_to_dwconv", 3.0),
    Target("na2d_k7", "fwdbwd_ratio_to_dwconv", 2.0),
    Target("sasa", "fwdbwd_ratio_to_dwconv_module", 2.0),
    Target("window", "fwdbwd_ratio_to_dwconv_module", 2.0),
)


def _noise_column(column: str) -> str:
    return {
        "fwd_ratio_to_dwconv": "fwd_ratio_noise",
        "fwdbwd_ratio_to_dwconv": "fwdbwd_ratio_noise",
        "fwdbwd_ratio_to_dwconv_module": "fwdbwd_module_ratio_noise",
    }[column]


def target_rows(rows: list[dict[str, Any]], targets: tuple[Target, ...] = TARGETS) -> list[dict[str, Any]]:
    """One row per target measured in `rows` (a `run_bench` result): the ratio, its noise and the verdict.

    `met` is "yes" or "no" when the ratio's paired spread is within RATIO_NOISE_LIMIT, and "noisy" when it
    is not: the run cannot decide. Targets whose operator or size was not measured are left out.
    """
    by_key = {(r["op"], r["size"]): r for r in rows}
    out = []
    for t in targets:
        r = by_key.get((t.op, t.size))
        if r is None or t.column not in r or math.isnan(r[t.column]):
            continue
        ratio, noise = r[t.column], r[_noise_column(t.column)]
        verdict = "noisy" if not noise <= RATIO_NOISE_LIMIT else ("yes" if ratio <= t.limit else "no")
        out.append(
            {
                "op": t.op,
                "size": t.size,
                "ratio": t.column,
                "limit": t.limit,
                "measured": ratio,
                "noise": noise,
                "met": verdict,
                "threads": r["threads"],
            }
        )
    return out


def format_targets(targets: list[dict[str, Any]]) -> list[str]:
    """The target table as text lines."""
    lines = [f"{'target':<46} {'limit':>6} {'measured':>9} {'noise':>6}  met"]
    for t in targets:
        name = f"{t['op']} {t['size']}x{t['size']} {t['ratio']}"
        lines.append(f"{name:<46} {t['limit']:>5.1f}x {t['measured']:>8.2f}x {t['noise']:>6.0%}  {t['met']}")
    return lines


def paired_ratios(times: list[float], baseline: list[float]) -> tuple[float, float]:
    """(median, IQR / median) of the per-repeat ratios times[i] / baseline[i].

    The operators alternate within a repeat, so the i-th times of two operators saw the same state of the
    machine; their ratio cancels what they share (frequency, a neighbour's load), and the spread of the
    ratios is the noise of the ratio itself. NaN for forward-only operators.

    Raises:
        ValueError: for lists of different lengths, empty, or with a non-positive baseline time.
    """
    if len(times) != len(baseline) or not times:
        raise ValueError(f"need one baseline time per time, got {len(times)} and {len(baseline)}")
    if any(not b > 0 for b in baseline):
        raise ValueError(f"baseline times must be positive, got {baseline}")
    ratios = [t / b for t, b in zip(times, baseline, strict=True)]
    if any(math.isnan(r) for r in ratios):
        return float("nan"), float("nan")
    med = statistics.median(ratios)
    return med, _spread(ratios) / med


def _peaks(cfg: BenchConfig) -> dict[int, dict[str, float]]:
    """Peak training memory (MiB) of every operator at every size, measured while the process is fresh
    and glibc returns large blocks at once (then the thresholds a long-running process settles at)."""
    _malloc_mode(peaks=True)
    peaks: dict[int, dict[str, float]] = {}
    for size in cfg.sizes:
        ops = _ops(cfg, size)
        _warm_up(ops, cfg.warmup)
        peaks[size] = {
            n: float("nan") if _forward_only(n) else _peak_mib(partial(s, True)) for n, (s, _) in ops.items()
        }
        del ops
    _malloc_mode(peaks=False)
    return peaks


def _timings(ops: _Ops, repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(forward, forward+backward) seconds of every operator, the operators alternating in a repeat."""
    fwd: dict[str, list[float]] = {n: [] for n in ops}
    fb: dict[str, list[float]] = {n: [] for n in ops}
    for _ in range(repeats):
        for name, (step, _) in ops.items():
            fwd[name].append(_time(step, False))
            fb[name].append(float("nan") if _forward_only(name) else _time(step, True))
    return fwd, fb


def run_bench(cfg: BenchConfig | None = None, *, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every operator at every size; write the CSV (if `cfg.out`) and return the rows."""
    cfg = cfg or BenchConfig()
    # Peaks first, for every size, in a fresh process; then the timings.
    peaks = _peaks(cfg)
    env = environment()
    roof = matmul_gflops()
    rows: list[dict[str, Any]] = []
    for size in cfg.sizes:
        ops = _ops(cfg, size)
        _warm_up(ops, cfg.warmup)
        fwd, fb = _timings(ops, cfg.repeats)
        for name, (_, macs_of) in ops.items():
            macs = macs_of()
            f_med, fb_med = statistics.median(fwd[name]), statistics.median(fb[name])
            f_ratio, f_noise = paired_ratios(fwd[name], fwd[BASELINE])
            fb_ratio, fb_noise = paired_ratios(fb[name], fb[BASELINE])
            noise = max(f_noise, fb_noise) if not math.isnan(fb_noise) else f_noise
            module_ratio, module_noise = (
                paired_ratios(fb[name], fb[MODULE_BASELINE])
                if MODULE_BASELINE in fb
                else (math.nan, math.nan)
            )
            rows.append(
                {
                    "op": name,
                    "batch": cfg.batch,
                    "channels": cfg.heads * cfg.head_dim,
                    "size": size,
                    "fwd_ms": f_med * 1e3,
                    "fwd_iqr_ms": _spread(fwd[name]) * 1e3,
                    "fwdbwd_ms": fb_med * 1e3,
                    "fwdbwd_iqr_ms": _spread(fb[name]) * 1e3,
                    "fwd_ratio_to_dwconv": f_ratio,
                    "fwd_ratio_noise": f_noise,
                    "fwdbwd_ratio_to_dwconv": fb_ratio,
                    "fwdbwd_ratio_noise": fb_noise,
                    "ratio_trusted": bool(noise <= RATIO_NOISE_LIMIT),
                    "fwdbwd_ratio_to_dwconv_module": module_ratio,
                    "fwdbwd_module_ratio_noise": module_noise,
                    "peak_train_mib": peaks[size][name],
                    "na2d_minimum_mib": _na2d_minimum_mib(cfg, size, name),
                    "macs": macs,
                    "fwd_gflops": 2 * macs / f_med / 1e9,
                    "matmul_gflops": roof,
                    "repeats": cfg.repeats,
                    "threads": env["torch_threads"],
                    "torch": env["torch"],
                    "cpu": env["cpu_model"],
                }
            )
            r = rows[-1]
            log(
                f"{size:>4} {name:<24} fwd {r['fwd_ms']:8.2f} ms ({f_ratio:6.2f}x ±{f_noise:4.0%})  "
                f"fwd+bwd {r['fwdbwd_ms']:8.2f} ms ({fb_ratio:6.2f}x ±{fb_noise:4.0%})"
                f"{'' if r['ratio_trusted'] else ' NOISY'}  "
                f"peak {r['peak_train_mib']:7.1f} MiB  {r['fwd_gflops']:6.1f} GFLOP/s (matmul {roof:.0f})"
            )
    targets = target_rows(rows)
    for line in format_targets(targets) if targets else []:
        log(line)
    from convattn.analysis.step_speed import step_speedups  # it times with this module's paired_ratios

    steps = step_speedups(
        batch=cfg.step_batch, repeats=cfg.step_repeats, noise_limit=RATIO_NOISE_LIMIT, log=log
    )
    if cfg.out is not None:
        write_csv(cfg.out, rows)
        if targets:
            write_csv(targets_path(cfg.out), targets)
        write_csv(training_path(cfg.out), steps)
    return rows


def training_path(out: Path) -> Path:
    """Where the training-step table (before/after) of the bench CSV `out` goes: `<stem>-training.csv`."""
    return out.with_name(f"{out.stem}-training{out.suffix}")


def targets_path(out: Path) -> Path:
    """Where the target table of the bench CSV `out` goes: beside it, `<stem>-targets.csv`."""
    return out.with_name(f"{out.stem}-targets{out.suffix}")
