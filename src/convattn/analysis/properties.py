"""The property table of Han et al. (2022, DWNet, Table 1), measured on the operators themselves.

Every mixer's spatial aggregation is probed through `aggregate(xw, xv)`: aggregation weights computed
from one input (xw), applied to another (xv, taking the place of the values). With autograd:

* support: the input pixels the centre output depends on, d out / d xv: a centred window ("local"),
  a window not centred on the query ("window"), or the whole map ("global");
* channel mixing: whether output channel c depends on value channel c' != c inside the aggregation;
* weight sharing: whether the effective weights d out[c, p] / d xv[c, p + δ] are the same at two
  interior positions p (shared across positions) and for two channels of one head or group (shared
  across channels);
* dynamic: whether the weights change when xw changes (xv fixed);
* parameters for k = 3, 5, 7 and multiply-adds for 16×16 and 32×32 maps (attention included).

Plain convolutions have no `aggregate`; their weights are their own (static) kernels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from convattn.analysis.flops import count_macs
from convattn.layers.mixers import create_mixer, list_mixers

__all__ = [
    "MIN_SIZE",
    "MixerProperties",
    "format_properties",
    "measure_properties",
    "property_table",
]

MIN_SIZE = 5  # the centre, the pixel beside it and a 3x3 window around each fit on the probe map

# Small, comparable settings: 16 channels in 4 heads (or groups) of 4.
_OPTIONS: dict[str, dict[str, Any]] = {
    "conv": {"kernel_size": 3},
    "dwconv": {"kernel_size": 3},
    "dynamic_dwconv": {"kernel_size": 3},
    "dynamic_dwconv_pixel": {"kernel_size": 3, "mode": "inhomogeneous", "groups": 4},
    "local_mlp": {"kernel_size": 3, "num_heads": 4},
    "sasa": {"kernel_size": 3, "num_heads": 4},
    "sasa_stem": {"window": 3, "num_heads": 4},
    "window": {"window": 3, "num_heads": 4},
    "mhsa": {"num_heads": 4},
}
_SIZE_OPTION = {"sasa_stem": "window", "window": "window", "mhsa": None}


@dataclass(frozen=True)
class MixerProperties:
    """One row of the property table."""

    mixer: str
    support: str
    channel_mixing: bool
    shared_across_positions: bool
    shared_across_channels: bool
    dynamic: bool
    params: dict[int, int]
    macs: dict[int, int]

    def row(self) -> dict[str, Any]:
        """Flat values for a CSV or a printed table."""
        out = asdict(self)
        for k, v in out.pop("params").items():
            out[f"params_k{k}"] = v
        for hw, v in out.pop("macs").items():
            out[f"macs_{hw}x{hw}"] = v
        return out


def _build(name: str, dim: int, **extra: Any) -> nn.Module:
    base = "dynamic_dwconv" if name == "dynamic_dwconv_pixel" else name
    return create_mixer(base, dim, **{**_OPTIONS[name], **extra})


def _aggregate(mixer: nn.Module, xw: Tensor, xv: Tensor) -> Tensor:
    aggregate = getattr(mixer, "aggregate", None)
    if callable(aggregate):
        return cast(Tensor, aggregate(xw, xv))
    return cast(Tensor, mixer(xv))


def _jacobian(mixer: nn.Module, xw: Tensor, xv: Tensor, c: int, p: tuple[int, int]) -> Tensor:
    """d aggregate(xw, xv)[0, c, p] / d xv: (C, H, W)."""
    xv = xv.clone().requires_grad_()
    out = _aggregate(mixer, xw, xv)[0, c, p[0], p[1]]
    (grad,) = torch.autograd.grad(out, xv)
    return grad[0]


def _support(jac: Tensor, p: tuple[int, int]) -> str:
    reach = jac.abs().sum(0) > 0  # (H, W)
    rows, cols = reach.nonzero(as_tuple=True)
    if bool(reach.all()):
        return "global"
    h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
    centred = int(rows.max()) - p[0] == p[0] - int(rows.min()) and int(cols.max()) - p[1] == p[1] - int(
        cols.min()
    )
    return f"{'local' if centred else 'window'} {h}x{w}"


def _window(jac: Tensor, c: int, p: tuple[int, int], r: int) -> Tensor:
    return jac[c, p[0] - r : p[0] + r + 1, p[1] - r : p[1] + r + 1]


def _check_size(size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, got size={size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} (a 3x3 window beside the centre), got size={size}")


def measure_properties(name: str, *, size: int = 11, seed: int = 0) -> MixerProperties:
    """Measure one mixer (`list_mixers()` names, plus 'dynamic_dwconv_pixel' for the per-pixel kind) on
    size x size probe maps (at least `MIN_SIZE`)."""
    if name not in _OPTIONS:
        raise ValueError(f"unknown mixer {name!r}; choose one of {', '.join(sorted(_OPTIONS))}")
    _check_size(size)
    torch.manual_seed(seed)
    dim = 16
    mixer = _build(name, dim).double().eval()
    xw = torch.randn(1, dim, size, size, dtype=torch.float64)
    xv = torch.randn(1, dim, size, size, dtype=torch.float64)
    centre = (size // 2, size // 2)
    c, c_same_head = 5, 6  # channels 4..7 form head (group) 1
    jac = _jacobian(mixer, xw, xv, c, centre)
    mixing = bool(torch.cat([jac[:c], jac[c + 1 :]]).abs().sum() > 0)
    r = 1  # the 3x3 window every local mixer is measured with
    beside = (centre[0] + 1, centre[1] + 1)
    shared_pos = torch.allclose(
        _window(jac, c, centre, r), _window(_jacobian(mixer, xw, xv, c, beside), c, beside, r)
    )
    other = _jacobian(mixer, xw, xv, c_same_head, centre)
    shared_ch = torch.allclose(_window(jac, c, centre, r), _window(other, c_same_head, centre, r))
    with torch.no_grad():
        dynamic = not torch.allclose(_aggregate(mixer, xw, xv), _aggregate(mixer, torch.randn_like(xw), xv))
    size_option = _SIZE_OPTION.get(name, "kernel_size")
    params = {
        k: sum(
            p.numel() for p in (_build(name, dim, **({size_option: k} if size_option else {}))).parameters()
        )
        for k in (3, 5, 7)
    }
    macs = {hw: count_macs(_build(name, dim).eval(), torch.randn(1, dim, hw, hw)) for hw in (16, 32)}
    return MixerProperties(
        name, _support(jac, centre), mixing, bool(shared_pos), bool(shared_ch), dynamic, params, macs
    )


def property_table(names: list[str] | None = None, *, size: int = 11) -> list[MixerProperties]:
    """Measure every mixer (or `names`)."""
    _check_size(size)  # before the first mixer is measured
    names = names or [*list_mixers(), "dynamic_dwconv_pixel"]
    return [measure_properties(n, size=size) for n in names]


def format_properties(rows: list[dict[str, Any]], size: int) -> list[str]:
    """The property table (rows of `MixerProperties.row()`) as aligned text lines for a terminal."""
    yes = {True: "yes", False: "no"}
    header = (
        f"{'mixer':<22}{'support':<13}{'ch. mixing':>11}{'shared: pos':>12}{'shared: ch':>11}{'dynamic':>9}"
        f"{'params k=3/5/7':>22}{'MACs 16²/32²':>22}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        params = f"{r['params_k3']}/{r['params_k5']}/{r['params_k7']}"
        macs = f"{r['macs_16x16']}/{r['macs_32x32']}"
        lines.append(
            f"{r['mixer']:<22}{r['support']:<13}{yes[r['channel_mixing']]:>11}"
            f"{yes[r['shared_across_positions']]:>12}{yes[r['shared_across_channels']]:>11}"
            f"{yes[r['dynamic']]:>9}{params:>22}{macs:>22}"
        )
    lines.append(f"measured with autograd on {size}x{size} float64 maps, 16 channels in heads/groups of 4")
    return lines
