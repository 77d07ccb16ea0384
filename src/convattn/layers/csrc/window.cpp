// Window attention (Swin) in 2-D on heads-last tensors (B, H, W, heads, d): forward and backward (CPU).
//
// Windows are products of one segment per axis: rows [r0, r0 + lr) x columns [c0, c0 + lc), built in
// Python (convattn/layers/window.py). Plain windows, windows cut by the image border and Swin's shifted
// windows (after the roll and the region mask) are all such products, so no key is ever masked: a
// window simply holds the n = lr * lc pixels that attend to each other.
// Each (image, window, head) is one task: its queries, keys and values are gathered into small dense
// buffers (keys transposed so SIMD lanes run along keys) and multiplied with register-blocked
// micro-kernels. The probabilities are saved per window as (nq, np): n rows rounded up to the register
// block, n columns rounded up to the SIMD width, zero in the padding. The backward recomputes nothing: dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = dS K,
// dK = dS^T Q, dV = P^T dO, and the bias gradient is summed per window shape, then scattered once.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

namespace convattn_window {

namespace {
using namespace convattn_simd;

constexpr int64_t kRows = 4;  // query rows per register block

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[r][u*L..] = sum_d A[r*lda + d] * BT[d*ldb + u*L..] for r < kRows, u < NV.
template <typename T, int NV>
inline void rows_block(const T* A, int64_t lda, int64_t D, const T* BT, int64_t ldb, T* C, int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  vec<T> acc[kRows][NV] = {};
  for (int64_t d = 0; d < D; ++d) {
    vec<T> b[NV];
    for (int u = 0; u < NV; ++u) b[u] = loadu(BT + d * ldb + u * L);
    for (int r = 0; r < kRows; ++r) {
      const vec<T> a = splat(A[r * lda + d]);
      for (int u = 0; u < NV; ++u) acc[r][u] += a * b[u];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int u = 0; u < NV; ++u) storeu(C + r * ldc + u * L, acc[r][u]);
}

// C (nrows x ncols) = A (nrows x D, row stride lda) times BT (D x ncols, row stride ldb); nrows is a
// multiple of kRows and ncols of the SIMD width.
template <typename T>
void matmul_rows(const T* A, int64_t lda, int64_t D, const T* BT, int64_t ldb, int64_t nrows, int64_t ncols, T* C,
                 int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  const int64_t nv = ncols / L;
  for (int64_t i0 = 0; i0 < nrows; i0 += kRows)
    for (int64_t v0 = 0; v0 < nv; v0 += 4) {
      const T* a = A + i0 * lda;
      const T* b = BT + v0 * L;
      T* c = C + i0 * ldc + v0 * L;
      switch (std::min<int64_t>(4, nv - v0)) {
        case 4: rows_block<T, 4>(a, lda, D, b, ldb, c, ldc); break;
        case 3: rows_block<T, 3>(a, lda, D, b, ldb, c, ldc); break;
        case 2: rows_block<T, 2>(a, lda, D, b, ldb, c, ldc); break;
        default: rows_block<T, 1>(a, lda, D, b, ldb, c, ldc); break;
      }
    }
}

// O[r][u*L..] = sum_{t < n} Wt[r*wr + t*wt] * X[t*ldx + u*L..] for r < R, u < NV. The R * NV accumulators
// are carried from one t to the next, so R * NV must cover the multiply-add's latency times its ports
// (8 on current x86): one vector wide (NV = 1), blocks take 8 rows, where 4 ran at half the rate.
template <typename T, int NV, int R = kRows>
inline void wsum_block(const T* Wt, int64_t wr, int64_t wt, int64_t n, const T* X, int64_t ldx, T* O, int64_t ldo) {
  constexpr int64_t L = kLanes<T>;
  vec<T> acc[R][NV] = {};
  for (int64_t t = 0; t < n; ++t) {
    vec<T> x[NV];
    for (int u = 0; u < NV; ++u) x[u] = loadu(X + t * ldx + u * L);
    for (int r = 0; r < R; ++r) {
      const vec<T> w = splat(Wt[r * wr + t * wt]);
      for (int u = 0; u < NV; ++u) acc[r][u] += w * x[u];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < NV; ++u) storeu(O + r * ldo + u * L, acc[r][u]);
}

// O (nrows x width) = sum over t < n of the weights Wt(row, t) = Wt[row*wr + t*wt] times the rows of X
// (row stride ldx): wr = ld, wt = 1 multiplies by a matrix, wr = 1, wt = ld by its transpose.
template <typename T>
void weighted_rows(const T* Wt, int64_t wr, int64_t wt, int64_t n, const T* X, int64_t ldx, int64_t nrows,
                   int64_t width, T* O, int64_t ldo) {
  constexpr int64_t L = kLanes<T>;
  const int64_t nv = width / L;
  if (nv == 1) {  // one vector wide: 8-row blocks, then a 4-row one (nrows is a multiple of kRows)
    int64_t i0 = 0;
    for (; i0 + 2 * kRows <= nrows; i0 += 2 * kRows)
      wsum_block<T, 1, 2 * kRows>(Wt + i0 * wr, wr, wt, n, X, ldx, O + i0 * ldo, ldo);
    for (; i0 < nrows; i0 += kRows) wsum_block<T, 1>(Wt + i0 * wr, wr, wt, n, X, ldx, O + i0 * ldo, ldo);
    return;
  }
  for (int64_t i0 = 0; i0 < nrows; i0 += kRows)
    for (int64_t v0 = 0; v0 < nv; v0 += 4) {
      const T* w = Wt + i0 * wr;
      const T* x = X + v0 * L;
      T* o = O + i0 * ldo + v0 * L;
      switch (std::min<int64_t>(4, nv - v0)) {
        case 4: wsum_block<T, 4>(w, wr, wt, n, x, ldx, o, ldo); break;
        case 3: wsum_block<T, 3>(w, wr, wt, n, x, ldx, o, ldo); break;
        case 2: wsum_block<T, 2>(w, wr, wt, n, x, ldx, o, ldo); break;
        default: wsum_block<T, 1>(w, wr, wt, n, x, ldx, o, ldo); break;
      }
    }
}

// One window shape (lr x lc pixels): its padded sizes and the bias of every (query, key) pair per head,
// -inf in the padding columns so that they drop out of the softmax.
template <typename T>
struct Shape {
  int64_t lr, lc, n, np, nq;
  std::vector<T> bias;     // (NH, nq, np)
  std::vector<int64_t> row, col;  // pixel t of the window: its row t / lc and column t % lc in the window
  std::vector<int64_t> at;        // ... and its offset in pixels of the image from the window's first
};

struct Window {
  int64_t r0, c0, shape, offset;  // offset of its probabilities within one image (all heads)
};

// Where the d channels of a head sit in a heads-last tensor: pixels ps elements apart (ps = NH d when
// the tensor is packed, 3 NH d for the q, k and v views of one qkv tensor), heads d apart.
struct Pix {
  int64_t ps, d;
};

template <typename T>
struct Layout {
  int64_t B, H, W, NH, D, DV, Dp, DVp, WH, WW;
  Pix q, k, v, o;  // o: the output and its gradient, always packed
  std::vector<Shape<T>> shapes;
  std::vector<Window> windows;
  int64_t image;  // probability entries per image: (window, head, nq, np), rows n..nq-1 zero
};

Pix pix_of(const at::Tensor& x) { return {convattn_common::pixel_stride(x, "window"), x.size(4)}; }

template <typename T>
Layout<T> make_layout(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rseg,
                      const at::Tensor& cseg, const T* bias, int64_t wh, int64_t ww) {
  constexpr int64_t L = kLanes<T>;
  Layout<T> lay;
  lay.B = q.size(0), lay.H = q.size(1), lay.W = q.size(2), lay.NH = q.size(3), lay.D = q.size(4);
  lay.DV = v.size(4), lay.Dp = round_up(lay.D, L), lay.DVp = round_up(lay.DV, L), lay.WH = wh, lay.WW = ww;
  lay.q = pix_of(q), lay.k = pix_of(k), lay.v = pix_of(v), lay.o = {lay.NH * lay.DV, lay.DV};
  const int64_t* rs = rseg.data_ptr<int64_t>();
  const int64_t* cs = cseg.data_ptr<int64_t>();
  const int64_t TW = 2 * ww - 1, TH = 2 * wh - 1;
  lay.image = 0;
  for (int64_t a = 0; a < rseg.size(0); ++a)
    for (int64_t c = 0; c < cseg.size(0); ++c) {
      const int64_t lr = rs[2 * a + 1], lc = cs[2 * c + 1];
      int64_t id = 0;
      while (id < static_cast<int64_t>(lay.shapes.size()) && (lay.shapes[id].lr != lr || lay.shapes[id].lc != lc)) ++id;
      if (id == static_cast<int64_t>(lay.shapes.size())) {
        Shape<T> s{lr, lc, lr * lc, round_up(lr * lc, L), round_up(lr * lc, kRows), {}, {}, {}, {}};
        for (int64_t r = 0; r < lr; ++r)
          for (int64_t c = 0; c < lc; ++c) s.row.push_back(r), s.col.push_back(c), s.at.push_back(r * lay.W + c);
        s.bias.assign(lay.NH * s.nq * s.np, T(0));
        for (int64_t h = 0; h < lay.NH; ++h)
          for (int64_t i = 0; i < s.n; ++i) {
            T* row = s.bias.data() + (h * s.nq + i) * s.np;
            for (int64_t t = 0; t < s.n; ++t) {
              const int64_t dr = s.row[t] - s.row[i] + wh - 1, dc = s.col[t] - s.col[i] + ww - 1;
              row[t] = bias ? bias[(h * TH + dr) * TW + dc] : T(0);
            }
            for (int64_t t = s.n; t < s.np; ++t) row[t] = -std::numeric_limits<T>::infinity();
          }
        lay.shapes.push_back(std::move(s));
      }
      lay.windows.push_back({rs[2 * a], cs[2 * c], id, lay.image});
      lay.image += lay.NH * lay.shapes[id].nq * lay.shapes[id].np;
    }
  return lay;
}

// Offset of the d channels of head h at pixel (r, c) of image b in a heads-last tensor laid out as p.
template <typename T>
inline int64_t pixel(const Layout<T>& lay, Pix p, int64_t b, int64_t r, int64_t c, int64_t h) {
  return ((b * lay.H + r) * lay.W + c) * p.ps + h * p.d;
}

// dst[0..d) = src[0..d) * mul, vector by vector.
template <typename T>
inline void copy_scaled(const T* src, int64_t d, T mul, T* dst) {
  constexpr int64_t L = kLanes<T>;
  int64_t c = 0;
  for (; c + L <= d; c += L) storeu(dst + c, loadu(src + c) * mul);
  for (; c < d; ++c) dst[c] = src[c] * mul;
}

// Rows t < n of a window into buf[t][ld] (times `mul`); rows n..rows-1 and columns d..ld-1 are zero.
template <typename T>
void gather_rows(const T* x, Pix p, const Layout<T>& lay, const Window& w, const Shape<T>& s, int64_t b,
                 int64_t h, T mul, int64_t rows, int64_t ld, T* buf) {
  const int64_t d = p.d;
  const T* first = x + pixel(lay, p, b, w.r0, w.c0, h);
  const bool next = h + 1 < lay.NH;  // the next task is the next head: its channels follow these
  for (int64_t t = 0; t < s.n; ++t) {
    T* dst = buf + t * ld;
    const T* src = first + s.at[t] * p.ps;
    if (next) __builtin_prefetch(src + d);
    copy_scaled(src, d, mul, dst);
    if (ld > d) std::fill(dst + d, dst + ld, T(0));  // (an empty fill still called memset, per pixel)
  }
  std::fill(buf + s.n * ld, buf + rows * ld, T(0));
}

// Columns t < n of a window into buf[c][np] (transposed, L x L tiles in registers); columns n..np-1
// are zero.
template <typename T>
void gather_cols(const T* x, Pix p, const Layout<T>& lay, const Window& w, const Shape<T>& s, int64_t b,
                 int64_t h, T* buf) {
  constexpr int64_t L = kLanes<T>;
  const int64_t d = p.d;
  const T* src[L];
  const int64_t ct = (d / L) * L;
  const T* first = x + pixel(lay, p, b, w.r0, w.c0, h);
  for (int64_t t0 = 0; t0 < s.n; t0 += L) {
    const int64_t m = std::min(L, s.n - t0);
    for (int64_t l = 0; l < m; ++l) src[l] = first + s.at[t0 + l] * p.ps;
    if (h + 1 < lay.NH)
      for (int64_t l = 0; l < m; ++l) __builtin_prefetch(src[l] + d);  // the next task's head
    int64_t c = 0;
    if (m == L)
      for (; c < ct; c += L) {
        vec<T> tile[L];
        for (int64_t l = 0; l < L; ++l) tile[l] = loadu(src[l] + c);
        transpose_tile<T>(tile);
        for (int64_t u = 0; u < L; ++u) storeu(buf + (c + u) * s.np + t0, tile[u]);
      }
    for (; c < d; ++c)
      for (int64_t l = 0; l < m; ++l) buf[c * s.np + t0 + l] = src[l][c];
  }
  for (int64_t c = 0; c < d; ++c) std::fill(buf + c * s.np + s.n, buf + (c + 1) * s.np, T(0));
}

// Rows t < n of buf[t][ld] (times `mul`) back to their pixels.
template <typename T>
void scatter_rows(const T* buf, int64_t ld, Pix p, T mul, const Layout<T>& lay, const Window& w,
                  const Shape<T>& s, int64_t b, int64_t h, T* x) {
  T* first = x + pixel(lay, p, b, w.r0, w.c0, h);
  for (int64_t t = 0; t < s.n; ++t) copy_scaled(buf + t * ld, p.d, mul, first + s.at[t] * p.ps);
}

template <typename T>
inline T hmax(vec<T> v) {
  T m = v[0];
  for (int64_t l = 1; l < kLanes<T>; ++l) m = std::max(m, v[l]);
  return m;
}
template <typename T>
inline T hsum(vec<T> v) {
  T s = 0;
  for (int64_t l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

// In-place softmax of row[0..np) after adding bias[0..np) (which holds -inf past the window).
template <typename T>
inline void softmax_row(T* row, const T* bias, int64_t np) {
  constexpr int64_t L = kLanes<T>;
  vec<T> m = splat(-std::numeric_limits<T>::infinity());
  for (int64_t u = 0; u < np; u += L) {
    const vec<T> s = loadu(row + u) + loadu(bias + u);
    storeu(row + u, s);
    m = m > s ? m : s;
  }
  const T mx = hmax<T>(m);
  vec<T> sum = {};
  for (int64_t u = 0; u < np; u += L) {
    const vec<T> e = vexp_nonpositive<T>(loadu(row + u) - mx);
    storeu(row + u, e);
    sum += e;
  }
  const T inv = T(1) / hsum<T>(sum);
  for (int64_t u = 0; u < np; u += L) storeu(row + u, loadu(row + u) * inv);
}

// Probabilities of kRows query rows in registers: P[r] = softmax(A[r] . BT + bias[r]) for r < valid,
// zero rows after; np = NV * L columns (windows of up to NV * L pixels).
template <typename T, int NV>
inline void softmax_block(const T* A, int64_t lda, int64_t D, const T* BT, int64_t np, const T* bias, int64_t valid,
                          T* P) {
  constexpr int64_t L = kLanes<T>;
  vec<T> acc[kRows][NV] = {};
  for (int64_t d = 0; d < D; ++d) {
    vec<T> b[NV];
    for (int u = 0; u < NV; ++u) b[u] = loadu(BT + d * np + u * L);
    for (int r = 0; r < kRows; ++r) {
      const vec<T> a = splat(A[r * lda + d]);
      for (int u = 0; u < NV; ++u) acc[r][u] += a * b[u];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    if (r >= valid) {
      for (int u = 0; u < NV; ++u) storeu(P + r * np + u * L, vec<T>{});
      continue;
    }
    vec<T> m = splat(-std::numeric_limits<T>::infinity());
    for (int u = 0; u < NV; ++u) {
      acc[r][u] += loadu(bias + r * np + u * L);
      m = m > acc[r][u] ? m : acc[r][u];
    }
    const T mx = hmax<T>(m);
    vec<T> sum = {};
    for (int u = 0; u < NV; ++u) {
      acc[r][u] = vexp_nonpositive<T>(acc[r][u] - mx);
      sum += acc[r][u];
    }
    const T inv = T(1) / hsum<T>(sum);
    for (int u = 0; u < NV; ++u) storeu(P + r * np + u * L, acc[r][u] * inv);
  }
}

// P (nq, np) = softmax over keys of A (nq rows of D, scaled queries) times BT (D, np) plus bias.
template <typename T>
void probabilities(const T* A, int64_t lda, int64_t D, const T* BT, const Shape<T>& s, const T* bias, T* P) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t i0 = 0; i0 < s.nq; i0 += kRows) {
    const T *a = A + i0 * lda, *bi = bias + i0 * s.np;
    T* p = P + i0 * s.np;
    const int64_t valid = s.n - i0;
    switch (s.np / L) {
      case 1: softmax_block<T, 1>(a, lda, D, BT, s.np, bi, valid, p); break;
      case 2: softmax_block<T, 2>(a, lda, D, BT, s.np, bi, valid, p); break;
      case 3: softmax_block<T, 3>(a, lda, D, BT, s.np, bi, valid, p); break;
      case 4: softmax_block<T, 4>(a, lda, D, BT, s.np, bi, valid, p); break;
      default:
        matmul_rows(a, lda, D, BT, s.np, kRows, s.np, p, s.np);
        for (int64_t r = 0; r < kRows; ++r) {
          if (r < valid)
            softmax_row(p + r * s.np, bi + r * s.np, s.np);
          else
            std::fill(p + r * s.np, p + (r + 1) * s.np, T(0));
        }
    }
  }
}

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, const Layout<T>& lay, T scale, T* out, T* probs) {
  const int64_t nwin = static_cast<int64_t>(lay.windows.size());
  at::parallel_for(0, lay.B * nwin * lay.NH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Qb, KT, Vb, Ob, scratch;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (nwin * lay.NH), h = task % lay.NH;
      const Window& w = lay.windows[(task / lay.NH) % nwin];
      const Shape<T>& s = lay.shapes[w.shape];
      Qb.resize(s.nq * lay.Dp), KT.resize(lay.D * s.np), Vb.resize(s.np * lay.DVp), Ob.resize(s.nq * lay.DVp);
      gather_rows(q, lay.q, lay, w, s, b, h, scale, s.nq, lay.Dp, Qb.data());  // (nq, Dp), scaled
      gather_cols(k, lay.k, lay, w, s, b, h, KT.data());                        // (D, np)
      gather_rows(v, lay.v, lay, w, s, b, h, T(1), s.n, lay.DVp, Vb.data());   // (n, DVp)
      if (!probs) scratch.resize(s.nq * s.np);  // inference: probabilities are not kept
      T* P = probs ? probs + b * lay.image + w.offset + h * s.nq * s.np : scratch.data();  // (nq, np)
      probabilities(Qb.data(), lay.Dp, lay.D, KT.data(), s, s.bias.data() + h * s.nq * s.np, P);
      weighted_rows(P, s.np, 1, s.n, Vb.data(), lay.DVp, s.nq, lay.DVp, Ob.data(), lay.DVp);  // (nq, DVp)
      scatter_rows(Ob.data(), lay.DVp, lay.o, T(1), lay, w, s, b, h, out);
    }
  });
}

template <typename T>
void backward_impl(const T* dout, const T* q, const T* k, const T* v, const T* probs, const Layout<T>& lay, T scale,
                   bool want_bias, T* dq, T* dk, T* dv, T* dbias) {
  const int64_t nwin = static_cast<int64_t>(lay.windows.size());
  const int64_t nshapes = static_cast<int64_t>(lay.shapes.size());
  // Per thread and window shape: the sum of dS over windows and images, (NH, nq, np).
  std::vector<std::vector<std::vector<T>>> dsum(want_bias ? at::get_num_threads() : 0);
  at::parallel_for(0, lay.B * nwin * lay.NH, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Qb, Kb, VT, dOb, dS, G;
    std::vector<std::vector<T>>* acc = nullptr;
    if (want_bias) {
      acc = &dsum[at::get_thread_num()];
      if (acc->empty())
        for (const auto& s : lay.shapes) acc->emplace_back(lay.NH * s.nq * s.np, T(0));
    }
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (nwin * lay.NH), h = task % lay.NH;
      const Window& w = lay.windows[(task / lay.NH) % nwin];
      const Shape<T>& s = lay.shapes[w.shape];
      const int64_t np = s.np, nq = s.nq, n = s.n;
      Qb.resize(nq * lay.Dp), Kb.resize(n * lay.Dp), VT.resize(lay.DV * np), dOb.resize(nq * lay.DVp);
      dS.resize(nq * np), G.resize(nq * std::max(lay.Dp, lay.DVp));
      gather_rows(q, lay.q, lay, w, s, b, h, scale, nq, lay.Dp, Qb.data());      // (nq, Dp), scaled
      gather_rows(k, lay.k, lay, w, s, b, h, T(1), n, lay.Dp, Kb.data());        // (n, Dp)
      gather_cols(v, lay.v, lay, w, s, b, h, VT.data());                          // (DV, np)
      gather_rows(dout, lay.o, lay, w, s, b, h, T(1), nq, lay.DVp, dOb.data());  // (nq, DVp)
      const T* P = probs + b * lay.image + w.offset + h * nq * np;  // (nq, np), rows n.. zero
      matmul_rows(dOb.data(), lay.DVp, lay.DV, VT.data(), np, nq, np, dS.data(), np);  // dP (nq, np)
      constexpr int64_t L = kLanes<T>;
      for (int64_t i = 0; i < n; ++i) {  // dS = P (dP - sum_t P dP)
        T* ds = dS.data() + i * np;
        const T* p = P + i * np;
        vec<T> dot = {};
        for (int64_t u = 0; u < np; u += L) dot += loadu(p + u) * loadu(ds + u);
        const T delta = hsum<T>(dot);
        for (int64_t u = 0; u < np; u += L) storeu(ds + u, loadu(p + u) * (loadu(ds + u) - delta));
      }
      std::fill(dS.data() + n * np, dS.data() + nq * np, T(0));
      if (acc) {
        T* a = (*acc)[w.shape].data() + h * nq * np;
        for (int64_t x = 0; x < n * np; x += L) storeu(a + x, loadu(a + x) + loadu(dS.data() + x));
      }
      weighted_rows(dS.data(), np, 1, n, Kb.data(), lay.Dp, nq, lay.Dp, G.data(), lay.Dp);  // dS K
      scatter_rows(G.data(), lay.Dp, lay.q, scale, lay, w, s, b, h, dq);  // each gradient laid out as its input
      weighted_rows(dS.data(), 1, np, n, Qb.data(), lay.Dp, nq, lay.Dp, G.data(), lay.Dp);  // dS^T (scale Q)
      scatter_rows(G.data(), lay.Dp, lay.k, T(1), lay, w, s, b, h, dk);
      weighted_rows(P, 1, np, n, dOb.data(), lay.DVp, nq, lay.DVp, G.data(), lay.DVp);  // P^T dO
      scatter_rows(G.data(), lay.DVp, lay.v, T(1), lay, w, s, b, h, dv);
    }
  });
  if (!want_bias) return;
  const int64_t TH = 2 * lay.WH - 1, TW = 2 * lay.WW - 1;
  for (const auto& per_thread : dsum)
    for (int64_t id = 0; id < nshapes && !per_thread.empty(); ++id) {
      const Shape<T>& s = lay.shapes[id];
      for (int64_t h = 0; h < lay.NH; ++h)
        for (int64_t i = 0; i < s.n; ++i) {
          const T* row = per_thread[id].data() + (h * s.nq + i) * s.np;
          for (int64_t t = 0; t < s.n; ++t) {
            const int64_t dr = s.row[t] - s.row[i] + lay.WH - 1, dc = s.col[t] - s.col[i] + lay.WW - 1;
            dbias[(h * TH + dr) * TW + dc] += row[t];
          }
        }
    }
}

template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

std::vector<at::Tensor> window_forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor bias,
                                          at::Tensor rseg, at::Tensor cseg, int64_t wh, int64_t ww,
                                          double scale, bool save) {
  at::Tensor out, probs;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_forward", [&] {
    const auto lay = make_layout<scalar_t>(q, k, v, rseg, cseg, optional_ptr<scalar_t>(bias), wh, ww);
    out = at::empty(v.sizes(), v.options());  // packed, whatever v's pixel stride
    probs = at::empty({save ? lay.B : 0, lay.image}, q.options());
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), lay,
                           static_cast<scalar_t>(scale), out.data_ptr<scalar_t>(),
                           save ? probs.data_ptr<scalar_t>() : nullptr);
  });
  return {out, probs};
}

// q, k and v are packed tensors, or (packed=true) the three views of one qkv (B, H, W, 3, NH, d) tensor:
// then the gradient comes back as one such tensor (the first output), in place of three.
std::vector<at::Tensor> window_backward(at::Tensor dout, at::Tensor q, at::Tensor k, at::Tensor v,
                                           at::Tensor bias, at::Tensor probs, at::Tensor rseg,
                                           at::Tensor cseg, int64_t wh, int64_t ww, double scale,
                                           bool want_bias, bool packed) {
  at::Tensor dq, dk, dv, dqkv, dbias;
  const int64_t step = packed ? convattn_common::packed_step(q, k, v) : 0;
  if (packed) {
    TORCH_CHECK(step > 0, "window kernel: packed=true needs the q, k, v views of one (B, H, W, 3, heads, d) tensor");
    dqkv = convattn_common::empty_packed_like(q, step);  // laid out as qkv (its pixels checked heads-last below)
  } else {
    TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
                "window kernel: packed=false needs contiguous q, k, v");
    dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_backward", [&] {
    const auto lay = make_layout<scalar_t>(q, k, v, rseg, cseg, optional_ptr<scalar_t>(bias), wh, ww);
    dbias = at::zeros({want_bias ? lay.NH : 0, 2 * wh - 1, 2 * ww - 1}, q.options());
    scalar_t* base = packed ? dqkv.data_ptr<scalar_t>() : nullptr;
    backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                            v.data_ptr<scalar_t>(), probs.data_ptr<scalar_t>(), lay, static_cast<scalar_t>(scale),
                            want_bias, packed ? base : dq.data_ptr<scalar_t>(),
                            packed ? base + step : dk.data_ptr<scalar_t>(),
                            packed ? base + 2 * step : dv.data_ptr<scalar_t>(),
                            want_bias ? dbias.data_ptr<scalar_t>() : nullptr);
  });
  if (packed) return {dqkv, at::empty({0}, q.options()), at::empty({0}, q.options()), dbias};
  return {dq, dk, dv, dbias};
}

}  // namespace convattn_window

// torch.ops.convattn.window_*: one translation unit per kernel file, built in parallel.
TORCH_LIBRARY_FRAGMENT(convattn, m) {
  m.def("window_forward", &convattn_window::window_forward);
  m.def("window_backward", &convattn_window::window_backward);
}
