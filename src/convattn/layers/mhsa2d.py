"""Multi-head self-attention over the pixels of an image, with the encodings of Cordonnier et al. 2020.

Layout: (B, C, H, W) -> (B, C_out, H, W); pixel t = i·W + j of the H×W grid, δ = p_key - p_query.

For head h, the score of query pixel q and key pixel k is a sum of the terms the encoding enables:

    content      (x_q W_q^h + b_q^h) · (x_k W_k^h + b_k^h) / √d      none, absolute*, relative_content
    relative     v_row^h · r_row[δ_row] + v_col^h · r_col[δ_col]     relative, relative_content
    quadratic    -½ (δ - Δ^h)ᵀ Σ_h⁻¹ (δ - Δ^h)                        quadratic, quadratic_generalized

Absolute encodings (learned, or 2-D sinusoidal) are added to the input first. The relative term is the
positional part v^T Ŵ_key r_δ of the Transformer-XL decomposition (Cordonnier et al. eq. 8) with the
embeddings r shared by the heads and v^T Ŵ_key folded into one vector per head, exactly as the
reference code; with content, the query bias b_q plays the role of u in the term u^T W_key x_k.
The quadratic term is eq. 9: an isotropic Σ⁻¹ = s_h² I (α = s_h²/2) or a learned Σ⁻¹ = S Sᵀ.

Memory stays linear in the number of pixels T. Every score above is a dot product of a few features
of the query and the key (the quadratic one: [1, p_q] · [-½ p_kᵀΣ⁻¹p_k + Δᵀ Σ⁻¹ p_k, Σ⁻¹p_k]; the
relative one: one-hot rows/columns of q against the embedding scores of k), so all heads run through
`F.scaled_dot_product_attention`, whose CPU kernel never forms the T×T matrix. When only positions
matter and the score splits into a row part plus a column part (relative without content, isotropic
quadratic) the softmax over the H×W grid factorises into a row softmax times a column softmax, and the
layer runs as two small 1-D attentions (exactly, not as an approximation). Where the C++ kernel runs
(and on small maps without it) the output projection goes first, and `position_mix` sums the heads'
row-times-column mixes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convattn.layers.kernels import BACKENDS, choose_backend, position_mix_kernel
from convattn.layers.pos_embed import sinusoidal_2d
from convattn.utils.checks import check_like, check_pair, check_positive_int, check_probability, check_tensor

__all__ = ["ENCODINGS", "POSITION_MIXING", "MultiHeadSelfAttention2d", "pixel_positions", "position_mix"]

ENCODINGS = (
    "none",
    "absolute",
    "absolute_sinusoidal",
    "relative",
    "relative_content",
    "quadratic",
    "quadratic_generalized",
)

POSITION_MIXING = ("auto", "rows_columns", "kronecker")
KRONECKER_MAX_PIXELS = 256  # "auto" never forms a (heads, T, T) attention beyond this many pixels


def pixel_positions(height: int, width: int, *, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    """(T, 2) (row, column) of every pixel, row-major, T = height·width."""
    rows = torch.arange(height, dtype=dtype, device=device)
    cols = torch.arange(width, dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).reshape(-1, 2)  # (T, 2)


def position_mix(z: Tensor, rows: Tensor, cols: Tensor, *, backend: str = "auto") -> Tensor:
    """Separable position-only attention with the heads summed, channels last.

        y[b, i, j] = Σ_h Σ_k Σ_l rows[h, i, k] · cols[h, j, l] · z[b, k, l, h]

    Args:
        z: (B, H, W, heads, C), each head's pixels (already through the output projection).
        rows: (heads, H, H), every head's row attention (query row i, key row k).
        cols: (heads, W, W), every head's column attention.
        backend: 'auto' (the C++ kernel on CPU when it builds: (H + W)·heads·C multiply-adds per pixel),
            'kernel', or 'torch' (one dense (H·W) × (H·W·heads) product per image, the heads side by side).

    Returns:
        (B, H, W, C).

    Raises:
        ValueError: for tensors of the wrong rank or shapes that do not match, or an unknown backend.
        TypeError: for tensors of different dtypes or devices.
    """
    check_tensor("z", z, 5)
    check_tensor("rows", rows, 3)
    check_tensor("cols", cols, 3)
    B, H, W, h, C = z.shape
    if rows.shape != (h, H, H) or cols.shape != (h, W, W):
        raise ValueError(
            f"for z of shape {tuple(z.shape)} (B, H, W, heads, C) rows must be ({h}, {H}, {H}) and cols "
            f"({h}, {W}, {W}), got rows.shape={tuple(rows.shape)}, cols.shape={tuple(cols.shape)}"
        )
    check_like("rows", rows, "z", z)
    check_like("cols", cols, "z", z)
    if choose_backend(backend, z, "posmix") == "kernel":
        return position_mix_kernel(z, rows, cols)
    T = H * W
    A = rows[:, :, None, :, None] * cols[:, None, :, None, :]  # (h, H, W, H, W): [h, i, j, k, l]
    A = A.permute(1, 2, 3, 4, 0).reshape(T, T * h)  # (T, T·h): [query t, (key s, head h)]
    y = torch.bmm(A.expand(B, -1, -1), z.reshape(B, T * h, C))  # (B, T, C)
    return y.view(B, H, W, C)


class MultiHeadSelfAttention2d(nn.Module):
    """Multi-head self-attention on (B, C, H, W) maps, for any H and W.

    Args:
        in_channels: C.
        out_channels: C_out (default C).
        num_heads: number of heads.
        encoding: one of `ENCODINGS` (see the module docstring).
        head_dim: query/key width per head for content scores (default C // num_heads).
        value_dim: value width per head (default C // num_heads); ignored without `value_proj`.
        value_proj: project values per head; False lets every head pool the input itself, so each
            head is C wide and the output projection maps heads·C -> C_out (the reference model).
        qkv_bias: biases on the query/key/value projections.
        out_bias: bias on the output projection.
        attn_dropout: dropout on the attention probabilities (training only).
        relative_content: with `encoding="relative"`, also add content scores (same as
            `encoding="relative_content"`).
        max_size: (rows, columns) of the learned absolute table and of the learned relative
            embeddings, which cover offsets |δ| < max_size (farther offsets share the last entry).
            A learned absolute table is resampled bilinearly for other map sizes.
        position_dim: width of the learned relative embeddings (default C).
        centre_std, spread_std: quadratic initialisation, centres ~ N(0, centre_std²) and spreads
            1 + N(0, spread_std²), as the reference code.
        position_mixing: how separable position-only layers mix: "rows_columns" (a row attention then
            a column attention), "kronecker" (one T×T product per head, output projection first) or
            "auto" (the faster of the two for the map, `kronecker_pays`). The results agree to rounding.
        backend: what runs the "kronecker" mix (`position_mix`): 'auto', 'kernel' or 'torch'.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        num_heads: int = 8,
        encoding: str = "none",
        head_dim: int | None = None,
        value_dim: int | None = None,
        value_proj: bool = True,
        qkv_bias: bool = True,
        out_bias: bool = True,
        attn_dropout: float = 0.0,
        relative_content: bool = False,
        max_size: int | tuple[int, int] = 16,
        position_dim: int | None = None,
        centre_std: float = 2.0,
        spread_std: float = 0.01,
        position_mixing: str = "auto",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        C = check_positive_int("in_channels", in_channels)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if relative_content and encoding not in ("relative", "relative_content"):
            raise ValueError(f"relative_content=True needs encoding='relative', got {encoding=}")
        if relative_content:
            encoding = "relative_content"
        self.encoding = encoding
        self.in_channels = C
        self.out_channels = C if out_channels is None else check_positive_int("out_channels", out_channels)
        self.attn_dropout = check_probability("attn_dropout", attn_dropout)
        self.max_size = check_pair("max_size", max_size)
        if position_mixing not in POSITION_MIXING:
            raise ValueError(
                f"position_mixing must be one of {', '.join(POSITION_MIXING)}, got {position_mixing!r}"
            )
        self.position_mixing = position_mixing
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.backend = backend
        h = self.num_heads

        self.content = encoding in ("none", "absolute", "absolute_sinusoidal", "relative_content")
        if self.content:
            self.head_dim = check_positive_int("head_dim", head_dim or max(1, C // h))
            self.W_q = nn.Linear(C, h * self.head_dim, bias=qkv_bias)
            self.W_k = nn.Linear(C, h * self.head_dim, bias=qkv_bias)
        self.value_proj = value_proj
        self.value_dim = check_positive_int("value_dim", value_dim or max(1, C // h)) if value_proj else C
        self.W_v = nn.Linear(C, h * self.value_dim, bias=qkv_bias) if value_proj else None
        self.W_o = nn.Linear(h * self.value_dim, self.out_channels, bias=out_bias)
        self._add_position_parameters(position_dim or C, centre_std, spread_std)

    def _add_position_parameters(self, position_dim: int, centre_std: float, spread_std: float) -> None:
        """The learned tables of the encoding (after the projections: seeded runs draw the same)."""
        C, h, encoding = self.in_channels, self.num_heads, self.encoding
        if encoding == "absolute":
            self.abs_table = nn.Parameter(torch.randn(C, *self.max_size) * 0.02)  # (C, M_h, M_w)
        if encoding == "absolute_sinusoidal" and C % 4:
            raise ValueError(f"absolute_sinusoidal needs in_channels divisible by 4, got in_channels={C}")
        if encoding.startswith("relative"):
            P = check_positive_int("position_dim", position_dim)
            M_h, M_w = self.max_size
            self.rel_row = nn.Parameter(torch.randn(2 * M_h - 1, P) * 0.02)  # r_row[δ + M_h - 1]
            self.rel_col = nn.Parameter(torch.randn(2 * M_w - 1, P) * 0.02)
            self.rel_row_keys = nn.Parameter(torch.randn(h, P) * 0.02)  # v_row^h
            self.rel_col_keys = nn.Parameter(torch.randn(h, P) * 0.02)
        if encoding.startswith("quadratic"):
            self.centres = nn.Parameter(torch.randn(h, 2) * centre_std)  # Δ^h = (row, col)
            if encoding == "quadratic":
                self.spreads = nn.Parameter(1 + torch.randn(h) * spread_std)  # s_h: Σ⁻¹ = s_h² I
            else:
                self.spreads = nn.Parameter(torch.eye(2).repeat(h, 1, 1) + torch.randn(h, 2, 2) * spread_std)

    # -- positional scores ---------------------------------------------------------------------

    @property
    def position_only(self) -> bool:
        """True when the attention does not depend on the input (relative or quadratic, no content)."""
        return self.encoding in ("relative", "quadratic", "quadratic_generalized")

    def inverse_covariance(self) -> Tensor:
        """Σ_h⁻¹ of the quadratic heads, (heads, 2, 2)."""
        if self.encoding == "quadratic":
            eye = torch.eye(2, dtype=self.spreads.dtype, device=self.spreads.device)
            return self.spreads[:, None, None] ** 2 * eye  # s² I
        if self.encoding == "quadratic_generalized":
            return self.spreads @ self.spreads.transpose(1, 2)  # S Sᵀ
        raise ValueError(f"inverse_covariance needs a quadratic encoding, this layer has {self.encoding!r}")

    def _relative_table(self, n: int, axis: int) -> Tensor:
        """(heads, n, n) relative scores along one axis: entry [a, b] scores offset δ = b - a."""
        emb, keys = (self.rel_row, self.rel_row_keys) if axis == 0 else (self.rel_col, self.rel_col_keys)
        M = self.max_size[axis]
        per_offset = keys @ emb.T  # (heads, 2M-1): v^h · r[δ]
        idx = torch.arange(n, device=emb.device)
        delta = (idx[None, :] - idx[:, None]).clamp(-(M - 1), M - 1) + (M - 1)  # (n, n)
        return per_offset[:, delta]  # (heads, n, n)

    def _quadratic_axis(self, n: int, axis: int, dtype: torch.dtype) -> Tensor:
        """(heads, n, n) isotropic quadratic scores along one axis: -½ s² (δ - Δ_axis)²."""
        idx = torch.arange(n, dtype=dtype, device=self.centres.device)
        delta = idx[None, :] - idx[:, None]  # (n, n): key - query
        diff = delta[None] - self.centres[:, axis, None, None].to(dtype)  # (heads, n, n)
        return -0.5 * self.spreads.to(dtype)[:, None, None] ** 2 * diff**2

    def axis_scores(self, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Row (heads, H, H) and column (heads, W, W) scores of a separable position-only layer."""
        if self.encoding == "relative":
            return self._relative_table(height, 0).to(dtype), self._relative_table(width, 1).to(dtype)
        if self.encoding == "quadratic":
            return self._quadratic_axis(height, 0, dtype), self._quadratic_axis(width, 1, dtype)
        raise ValueError(f"{self.encoding!r} scores do not split into rows and columns")

    def _position_features(self, height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Query (heads, T, F) and key (heads, T, F) features whose dot product is the position score."""
        h = self.num_heads
        if self.encoding.startswith("relative"):
            rows, cols = (
                self._relative_table(height, 0),
                self._relative_table(width, 1),
            )  # (h, H, H), (h, W, W)
            eye_r = torch.eye(height, dtype=dtype, device=rows.device)
            eye_c = torch.eye(width, dtype=dtype, device=rows.device)
            q_feat = torch.cat(
                [eye_r.repeat_interleave(width, 0), eye_c.repeat(height, 1)], dim=1
            )  # (T, H + W): one-hot row and column of the query
            k_rows = rows.transpose(1, 2).repeat_interleave(width, 1)  # (h, T, H): [k, a] = f(i_k - a)
            k_cols = cols.transpose(1, 2).repeat(1, height, 1)  # (h, T, W): [k, b] = f(j_k - b)
            k_feat = torch.cat([k_rows, k_cols], dim=2).to(dtype)  # (h, T, H + W)
            return q_feat.expand(h, -1, -1), k_feat
        # Quadratic: centred coordinates keep the features small; the shift cancels in the softmax.
        pos = pixel_positions(height, width, dtype=dtype, device=self.centres.device)
        pos = pos - pos.mean(0)  # (T, 2)
        P = self.inverse_covariance().to(dtype)  # (h, 2, 2)
        mu = self.centres.to(dtype)  # (h, 2)
        Pp = torch.einsum("hab,tb->hta", P, pos)  # (h, T, 2): Σ⁻¹ p_k
        key_only = -0.5 * (pos * Pp).sum(-1) + torch.einsum("ha,hta->ht", mu, Pp)  # (h, T)
        q_feat = torch.cat([torch.ones_like(pos[:, :1]), pos], dim=1)  # (T, 3): [1, p_q]
        k_feat = torch.cat([key_only[..., None], Pp], dim=2)  # (h, T, 3)
        return q_feat.expand(h, -1, -1), k_feat

    # -- forward -----------------------------------------------------------------------------------

    def _prepare_input(self, x: Tensor) -> Tensor:
        check_tensor("x", x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, H, W) input, got x.shape={tuple(x.shape)}")
        H, W = x.shape[-2:]
        if self.encoding == "absolute":
            table = self.abs_table.to(x.dtype)
            if (H, W) != self.max_size:
                table = F.interpolate(table[None], size=(H, W), mode="bilinear", align_corners=False)[0]
            return x + table  # (B, C, H, W) + (C, H, W)
        if self.encoding == "absolute_sinusoidal":
            return x + sinusoidal_2d(H, W, self.in_channels, dtype=x.dtype, device=x.device)
        return x

    def _values(self, tokens: Tensor) -> Tensor:
        """(B, T, C) tokens -> (B, heads, T, d_v) values; without projection every head sees the input."""
        B, T, _ = tokens.shape
        if self.W_v is None:
            return tokens[:, None].expand(B, self.num_heads, T, self.in_channels)  # (B, h, T, C)
        v = self.W_v(tokens).reshape(B, T, self.num_heads, self.value_dim)  # (B, T, h, d_v)
        return v.transpose(1, 2)  # (B, h, T, d_v)

    def _features(self, tokens: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
        """Query and key features (B or 1, heads, T, F) whose dot product is the full score."""
        B, T, _ = tokens.shape
        parts_q, parts_k = [], []
        if self.content:
            q = self.W_q(tokens).reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
            k = self.W_k(tokens).reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d)
            parts_q.append(q / math.sqrt(self.head_dim))
            parts_k.append(k)
        if self.encoding.startswith(("relative", "quadratic")):
            pq, pk = self._position_features(H, W, tokens.dtype)  # (h, T, F) each
            n = B if self.content else 1
            parts_q.append(pq[None].expand(n, -1, -1, -1))
            parts_k.append(pk[None].expand(n, -1, -1, -1))
        return torch.cat(parts_q, dim=-1), torch.cat(parts_k, dim=-1)

    def _attend_fused(self, x: Tensor) -> Tensor:
        """All encodings: SDPA over features, heads in a batch axis. x: (B, C, H, W) -> (B, T, h·d_v)."""
        B, _, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2).contiguous()  # (B, T, C): fused kernels want unit stride
        q, k = self._features(tokens, H, W)  # (B|1, h, T, F)
        v = self._values(tokens)  # (B, h, T, d_v)
        Fq, dv = q.shape[-1], v.shape[-1]
        # The fused CPU kernel wants one width for q, k and v: pad the narrower side with zeros.
        if Fq < dv:
            q, k = F.pad(q, (0, dv - Fq)), F.pad(k, (0, dv - Fq))
        elif Fq > dv:
            v = F.pad(v, (0, Fq - dv))
        q, k = q.expand(B, -1, -1, -1), k.expand(B, -1, -1, -1)
        p = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=1.0)[..., :dv]  # (B, h, T, d_v)
        return out.transpose(1, 2).reshape(B, H * W, self.num_heads * dv)  # (B, T, h·d_v)

    def _attend_separable(self, x: Tensor) -> Tensor:
        """Row-times-column attention of separable position-only layers: (B, C, H, W) -> (B, T, h·d_v).

        Channels stay last throughout, so that both mixes are plain (batched) matrix products on
        contiguous memory: rows mix as A_r @ (H, W·d) per head, columns as A_c @ (W, d) per row.
        """
        B, C, H, W = x.shape
        h = self.num_heads
        rows, cols = self.axis_scores(H, W, x.dtype)
        A_r, A_c = rows.softmax(-1), cols.softmax(-1)  # (h, H, H), (h, W, W)
        xl = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view when x is channels-last in memory
        if self.W_v is None:
            v = xl.reshape(B, 1, H, W * C)  # (B, 1, H, W·C): every head reads the input
        else:
            v = self.W_v(xl).reshape(B, H, W, h, self.value_dim).permute(0, 3, 1, 2, 4)  # (B, h, H, W, d_v)
            v = v.reshape(B, h, H, W * self.value_dim)  # (B, h, H, W·d_v)
        d = v.shape[-1] // W
        u = torch.matmul(A_r, v).view(B, h, H, W, d)  # (B, h, H, W, d): rows mixed
        out = torch.matmul(A_c[:, None], u)  # (h, 1, W, W) @ (B, h, H, W, d) -> (B, h, H, W, d): columns
        return out.permute(0, 2, 3, 1, 4).reshape(B, H * W, h * d)  # (B, T, h·d_v)

    def _attend_kronecker(self, x: Tensor, path: str) -> Tensor:
        """Separable position-only layers, output projection first: (B, C, H, W) -> (B, T, C_out).

        The output projection goes first, per head (z_h = v_h W_o^hᵀ, C_out wide), and the heads' T×T
        attentions A_h = A_r^h ⊗ A_c^h sum them, y = Σ_h A_h z_h (`position_mix`): in the C++ kernel as
        a row mix of a column mix, otherwise as one (T × T·h) product per image. Either way there are
        no small batched products and no head permutes, which is where the row-then-column mix spends
        its time (see `kronecker_pays`). `path` is the mix's backend, as `forward` chose it.
        """
        B, C, H, W = x.shape
        h, T, Co = self.num_heads, H * W, self.out_channels
        rows, cols = self.axis_scores(H, W, x.dtype)
        A_r, A_c = rows.softmax(-1), cols.softmax(-1)  # (h, H, H), (h, W, W)
        tokens = x.permute(0, 2, 3, 1).reshape(B, T, C)  # (B, T, C): a view when x is channels-last
        W_o = self.W_o.weight.view(Co, h, self.value_dim)  # (C_out, h, d_v)
        if self.W_v is None:
            z = tokens @ W_o.permute(2, 1, 0).reshape(C, h * Co)  # (B, T, h·C_out): every head's z_h
        else:
            v = self.W_v(tokens).view(B, T, h, self.value_dim)  # (B, T, h, d_v)
            z = torch.einsum("bthd,ohd->btho", v, W_o)  # (B, T, h, C_out)
        y = position_mix(z.reshape(B, H, W, h, Co), A_r, A_c, backend=path).view(B, T, Co)
        return y if self.W_o.bias is None else y + self.W_o.bias

    def kronecker_pays(self, height: int, width: int, *, kernel: bool = False) -> bool:
        """Whether a separable layer runs faster with the output projection first (`_attend_kronecker`).

        With the C++ kernel (`kernel=True`) it always does: the kernel's mix costs (H + W)·C_out
        multiply-adds per pixel and head, as the row-then-column mix's (H + W)·d_v, without its small
        batched products and head permutes. Forward+backward at 2 threads it ran 1.4× faster at 16×16
        (hidden 32, batch 64), 1.2× (hidden 400, batch 8), and level at 32×32 (hidden 64, batch 8).
        Without the kernel, the full product costs T·C_out per pixel and head, but runs as one large
        matrix product instead of many small ones: it won up to a 4× ratio in a one-thread CPU
        benchmark (8×8 maps, 64 channels, 9 heads) and lost at 8× (16×16, 32 channels). It forms the
        (heads, T, T) attention, so "auto" keeps it to maps of at most KRONECKER_MAX_PIXELS pixels.
        `position_mixing` overrides the choice.
        """
        if self.position_mixing != "auto":
            return self.position_mixing == "kronecker"
        if kernel:
            return True
        T = height * width
        return T <= KRONECKER_MAX_PIXELS and T * self.out_channels <= 4 * (height + width) * self.value_dim

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C_out, H, W)."""
        x = self._prepare_input(x)
        B, _, H, W = x.shape
        separable = self.encoding in ("relative", "quadratic")
        if separable and not (self.training and self.attn_dropout > 0):
            path = choose_backend(self.backend, x, "posmix")  # chosen once, for the rule and the mix
            if self.kronecker_pays(H, W, kernel=path == "kernel"):
                out = self._attend_kronecker(x, path)  # (B, T, C_out)
            else:
                out = self.W_o(self._attend_separable(x))  # (B, T, h·d_v) -> (B, T, C_out)
        else:
            out = self.W_o(self._attend_fused(x))  # (B, T, h·d_v) -> (B, T, C_out)
        return out.transpose(1, 2).reshape(B, self.out_channels, H, W)

    @torch.no_grad()
    def attention_probs(self, x: Tensor, query: tuple[int, int]) -> Tensor:
        """Every head's attention over the H×W map for one query pixel: (B, heads, H, W).

        For position-only encodings the result is the same for every image (B of `x` is kept).
        """
        x = self._prepare_input(x)
        B, _, H, W = x.shape
        i, j = query
        if not (0 <= i < H and 0 <= j < W):
            raise ValueError(f"query {query} lies outside the {H}x{W} map")
        q, k = self._features(x.flatten(2).transpose(1, 2), H, W)  # (B|1, h, T, F)
        scores = torch.einsum("bhf,bhtf->bht", q[:, :, i * W + j], k)  # (B|1, h, T)
        return scores.softmax(-1).reshape(-1, self.num_heads, H, W).expand(B, -1, -1, -1)
