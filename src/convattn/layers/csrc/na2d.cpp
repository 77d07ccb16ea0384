// Neighbourhood attention in 2-D on heads-last tensors (B, H, W, heads, d): forward and backward (CPU).
//
// Windows come from per-axis tables built in Python (convattn/layers/neighborhood.py):
//   index (n, k): key position of slot t for query i;  valid (n, k): inside the image;
//   offset (n, k): rel/bias table index (key - query in steps, + k - 1).
// Layout trick: each (batch, head) is transposed into rows of (channel, column) so that SIMD lanes run
// along W: L neighbouring queries (L = one register: 64 or 32 bytes / sizeof(T)) are scored against their keys with one
// vector multiply-add per channel and window slot. Windows whose L keys are contiguous (the interior,
// for every border mode) take that path; the few lanes at the borders take a per-lane path.
// Probabilities are saved as (B, heads, H, K, W). The backward is two gather passes (per query, then per
// key row through inverse tables), so every output element has one writer and no atomics are needed.
#include "common.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

namespace convattn_na2d {

namespace {
using namespace convattn_simd;

// Where element (b, i, j, h, c) of a (B, H, W, NH, C) tensor lies: b sb + i sr + j sj + h sh + c sc. Two
// kinds are read and written: channels adjacent (sc = 1; heads-last, or the views of one packed qkv) and
// columns adjacent (sj = 1; permuted views of an NCHW tensor such as a 1×1 conv's output).
struct Layout {
  int64_t sb, sr, sj, sh, sc;
  int64_t at(int64_t b, int64_t i, int64_t j, int64_t h) const { return b * sb + i * sr + j * sj + h * sh; }
};

struct Geometry {
  int64_t B, H, W, NH, D, DV, KH, KW, K, TH, TW;  // TH, TW: rel/bias table sides (2k - 1)
  int64_t PL, Wp;  // left padding and row stride of the transposed slabs (column j at j + PL)
  // rel is (TH, TW, NH, D), or split into rows and columns: (TH + TW, NH, D), the embedding of offset
  // (oa, ob) the sum of its rows oa and TH + ob (decomposed relative embeddings).
  bool split_rel = false;
  // Per row of a split table and head, (row NH + h): whether its d values are all zero (SASA's row
  // embedding in the heads its column half covers, and the other way round); those terms are skipped.
  const char* rel_zero = nullptr;
  // Layouts of the q, k and v read, of the dq, dk and dv written, and of the output and its gradient
  // (always contiguous).
  Layout lq, lk, lv, lgq, lgk, lgv, lo;
  int64_t rel_numel() const { return (split_rel ? TH + TW : TH * TW) * NH * D; }
};

struct Tables {
  const int64_t *r_idx, *r_off, *c_idx, *c_off;
  const bool *r_ok, *c_ok;
  // Per column block jb and slot b: whether the block's lanes read contiguous keys with one rel/bias
  // offset (regular), the key column of lane 0 (negative columns lie in the zero padding), and for
  // border='mask' an additive lane mask (0, or -inf for keys outside the image).
  std::vector<char> regular;
  std::vector<int64_t> base;
};
constexpr int64_t kIrregular = std::numeric_limits<int64_t>::min();

// fixed: windows at fixed offsets (border 'mask' or 'zeros'), so every block is regular once the slabs
// carry col_dilation * (KW / 2) zero columns on each side.
template <typename T>
Tables make_tables(const at::Tensor& r_idx, const at::Tensor& r_ok, const at::Tensor& r_off,
                   const at::Tensor& c_idx, const at::Tensor& c_ok, const at::Tensor& c_off,
                   const Geometry& g, bool fixed, int64_t col_dilation) {
  Tables tb{r_idx.data_ptr<int64_t>(), r_off.data_ptr<int64_t>(), c_idx.data_ptr<int64_t>(),
            c_off.data_ptr<int64_t>(),  r_ok.data_ptr<bool>(),     c_ok.data_ptr<bool>(), {}, {}};
  const int64_t L = kLanes<T>, nb = (g.W + L - 1) / L;
  tb.base.assign(nb * g.KW, kIrregular);
  for (int64_t jb = 0; jb < nb; ++jb) {
    const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
    for (int64_t b = 0; b < g.KW; ++b) {
      if (fixed) {
        tb.base[jb * g.KW + b] = j0 + (b - g.KW / 2) * col_dilation;
        continue;
      }
      const int64_t first = tb.c_idx[j0 * g.KW + b], off = tb.c_off[j0 * g.KW + b];
      bool ok = true;
      for (int64_t l = 0; l < n && ok; ++l) {
        const int64_t j = j0 + l;
        ok = tb.c_ok[j * g.KW + b] && tb.c_idx[j * g.KW + b] == first + l && tb.c_off[j * g.KW + b] == off;
      }
      if (ok) tb.base[jb * g.KW + b] = first;
    }
  }
  return tb;
}

// For border='mask', per column block and slot: 0 for lanes whose key is inside the image, -inf outside.
template <typename T>
std::vector<vec<T>> lane_masks(const Tables& tb, const Geometry& g) {
  const int64_t L = kLanes<T>, nb = (g.W + L - 1) / L;
  std::vector<vec<T>> masks(nb * g.KW, vec<T>{});
  for (int64_t jb = 0; jb < nb; ++jb)
    for (int64_t b = 0; b < g.KW; ++b)
      for (int64_t l = 0; l < std::min(L, g.W - jb * L); ++l)
        if (!tb.c_ok[(jb * L + l) * g.KW + b]) masks[jb * g.KW + b][l] = -std::numeric_limits<T>::infinity();
  return masks;
}

// Copy rows [r0, r1) of head h of image b from x (B, H, W, NH, C), laid out as lx, into slab[row][c][Wp].
// Adjacent channels: blocks of up to L pixels × L channels go through an in-register transpose, masked
// loads of a pixel's channels and masked stores of a channel's pixels (the lanes past the row's last pixel
// are zeros and land in the slab's zero padding, which stays zero). Adjacent columns: each channel's row
// is one contiguous copy.
template <typename T>
void to_slab(const T* x, int64_t C, const Layout& lx, const Geometry& g, int64_t b, int64_t h, int64_t r0,
             int64_t r1, T* slab) {
  constexpr int64_t L = kLanes<T>;
  if (lx.sc != 1) {  // lx.sj == 1 (checked where layouts are made)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const T* src = x + lx.at(b, r, 0, h) + c * lx.sc;
        T* dst = slab + ((r - r0) * C + c) * g.Wp + g.PL;
        int64_t j = 0;  // vector by vector: a row is too short for memmove to pay its call
        for (; j + L <= g.W; j += L) storeu(dst + j, loadu(src + j));
        if (j < g.W) store_first(dst + j, load_first(src + j, g.W - j), g.W - j);
      }
    return;
  }
  const int64_t stride = lx.sj;  // between neighbouring pixels
  vec<T> tile[L];
  for (int64_t r = r0; r < r1; ++r) {
    const T* src = x + lx.at(b, r, 0, h);
    T* dst = slab + (r - r0) * C * g.Wp + g.PL;
    for (int64_t j0 = 0; j0 < g.W; j0 += L) {
      const int64_t n = std::min(L, g.W - j0);
      for (int64_t c0 = 0; c0 < C; c0 += L) {
        const int64_t m = std::min(L, C - c0);
        if (n == L && m == L) {  // a full tile: plain loads and stores
          transpose_copy(src + j0 * stride + c0, stride, dst + c0 * g.Wp + j0, g.Wp);
          continue;
        }
        // Loops of constant length with the bounds as conditions: the tile stays in registers.
#pragma GCC unroll 16
        for (int64_t l = 0; l < L; ++l) tile[l] = l < n ? load_first(src + (j0 + l) * stride + c0, m) : vec<T>{};
        transpose_tile<T>(tile);
#pragma GCC unroll 16
        for (int64_t c = 0; c < L; ++c)
          if (c < m) storeu(dst + (c0 + c) * g.Wp + j0, tile[c]);
      }
    }
  }
}

// Size a slab for `rows` rows of C channels and zero only its padding columns (to_slab fills the rest).
template <typename T>
void prepare_slab(std::vector<T>& slab, int64_t rows, int64_t C, const Geometry& g) {
  const int64_t need = rows * C * g.Wp;
  if (static_cast<int64_t>(slab.size()) < need) slab.resize(need);
  for (int64_t rc = 0; rc < rows * C; ++rc) {
    T* line = slab.data() + rc * g.Wp;
    std::fill(line, line + g.PL, T(0));
    std::fill(line + g.PL + g.W, line + g.Wp, T(0));
  }
}

// Per-task work split: (b, h, chunk of rows), enough tasks to keep every thread busy.
struct Split {
  int64_t chunk, nchunks;
};
Split split_rows(const Geometry& g) {
  const int64_t want = std::max<int64_t>(1, (8 * at::get_num_threads() + g.B * g.NH - 1) / (g.B * g.NH));
  const int64_t nchunks = std::min(g.H, want);
  const int64_t chunk = (g.H + nchunks - 1) / nchunks;
  return {chunk, (g.H + chunk - 1) / chunk};
}

// Key rows used by query rows [i0, i1).
std::pair<int64_t, int64_t> key_rows(const Tables& tb, const Geometry& g, int64_t i0, int64_t i1) {
  int64_t lo = g.H, hi = -1;
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t a = 0; a < g.KH; ++a) {
      lo = std::min(lo, tb.r_idx[i * g.KH + a]);
      hi = std::max(hi, tb.r_idx[i * g.KH + a]);
    }
  return {lo, hi + 1};
}

// One task's (image, head, chunk of query rows) and the transposed key and value rows its windows read.
struct Task {
  int64_t b, h, i0, i1, kr0;
};
Task task_of(const Tables& tb, const Geometry& g, const Split& sp, int64_t task) {
  const int64_t b = task / (g.NH * sp.nchunks), h = (task / sp.nchunks) % g.NH;
  const int64_t i0 = (task % sp.nchunks) * sp.chunk, i1 = std::min(g.H, i0 + sp.chunk);
  return {b, h, i0, i1, key_rows(tb, g, i0, i1).first};
}
template <typename T>
Task load_key_slabs(const T* k, const T* v, const Tables& tb, const Geometry& g, const Split& sp, int64_t task,
                    std::vector<T>& Kslab, std::vector<T>& Vslab) {
  const auto [b, h, i0, i1, kr0] = task_of(tb, g, sp, task);
  const int64_t kr1 = key_rows(tb, g, i0, i1).second;
  if (k) {  // null for the weighted sums with given weights, which read values only
    prepare_slab(Kslab, kr1 - kr0, g.D, g);
    to_slab(k, g.D, g.lk, g, b, h, kr0, kr1, Kslab.data());
  }
  prepare_slab(Vslab, kr1 - kr0, g.DV, g);
  to_slab(v, g.DV, g.lv, g, b, h, kr0, kr1, Vslab.data());
  return {b, h, i0, i1, kr0};
}

// Software prefetch of the next task's rows of head h, spread over this task's blocks. The kernel reads each
// input element once, so its rows come from memory, not cache: on their own the slab copies stall on
// every load (to_slab ran 4x slower from memory than from cache). Requested a few pixels per block, the
// next task's rows load while this task computes.
template <typename T>
struct RowPrefetch {
  struct Stream {
    const char* first;  // head h of the first pixel
    int64_t pixels, done, stride, lines;  // pixel stride in bytes; cache lines per pixel's head
  };
  Stream streams[3] = {};
  int64_t nstreams = 0;

  // Rows [r0, r1) of head h of image b of x (B, H, W, NH, C) laid out as lx; null x adds nothing, and so
  // does a layout whose rows are not one run of evenly spaced pixels with adjacent channels (adjacent
  // columns are contiguous runs, which the hardware prefetcher follows).
  void add(const T* x, int64_t C, const Layout& lx, const Geometry& g, int64_t b, int64_t h, int64_t r0,
           int64_t r1) {
    if (!x || r1 <= r0 || lx.sc != 1 || lx.sr != g.W * lx.sj) return;
    const T* first = x + lx.at(b, r0, 0, h);
    streams[nstreams++] = {reinterpret_cast<const char*>(first), (r1 - r0) * g.W, 0,
                           lx.sj * static_cast<int64_t>(sizeof(T)), (C * static_cast<int64_t>(sizeof(T)) + 63) / 64};
  }
  // Request the next `count` pixels of every stream.
  void advance(int64_t count) {
    for (int64_t s = 0; s < nstreams; ++s) {
      Stream& st = streams[s];
      const int64_t end = std::min(st.pixels, st.done + count);
      for (int64_t p = st.done; p < end; ++p)
        for (int64_t l = 0; l < st.lines; ++l) __builtin_prefetch(st.first + p * st.stride + l * 64, 0, 2);
      st.done = end;
    }
  }
  int64_t pixels() const { return nstreams ? streams[0].pixels : 0; }
};

// Query rows [lo, hi) whose windows reach key rows [k0, k1), from the inverse row table.
std::pair<int64_t, int64_t> query_rows(const int64_t* r_inv, int64_t mr, int64_t H, int64_t k0, int64_t k1) {
  int64_t lo = H, hi = -1;
  for (int64_t kr = k0; kr < k1; ++kr)
    for (int64_t x = 0; x < mr && r_inv[(kr * mr + x) * 2] >= 0; ++x) {
      lo = std::min(lo, r_inv[(kr * mr + x) * 2]);
      hi = std::max(hi, r_inv[(kr * mr + x) * 2]);
    }
  return {lo, hi + 1};
}

template <typename T>
inline const T* rel_at(const T* rel, const Geometry& g, int64_t oa, int64_t ob, int64_t h) {
  return rel + ((oa * g.TW + ob) * g.NH + h) * g.D;
}

// Element offsets in rel of the rows whose sum is the embedding of offset (oa, ob) for head h: one in a
// full table, two (its row and its column) in a split one. Returns how many.
inline int rel_rows(const Geometry& g, int64_t oa, int64_t ob, int64_t h, int64_t* at) {
  if (!g.split_rel) {
    at[0] = ((oa * g.TW + ob) * g.NH + h) * g.D;
    return 1;
  }
  at[0] = (oa * g.NH + h) * g.D;
  at[1] = ((g.TH + ob) * g.NH + h) * g.D;
  return 2;
}

// Fixed windows (slot a, b at offset a + KH / 2, b + KW / 2): where embedding term u of head h starts, u
// a slot of a full table, or a row (u < KH) or column (KH + b) of a split one.
inline int64_t fixed_rel_at(const Geometry& g, int64_t u, int64_t h) {
  if (g.split_rel) return ((u < g.KH ? u + g.KH / 2 : g.TH + u - g.KH + g.KW / 2) * g.NH + h) * g.D;
  return (((u / g.KW + g.KH / 2) * g.TW + u % g.KW + g.KW / 2) * g.NH + h) * g.D;
}

// q . rel(oa, ob) for one query whose channel c is at Q[c * Wp] (the per-lane paths at the borders).
template <typename T>
T rel_dot(const T* rel, const Geometry& g, int64_t oa, int64_t ob, int64_t h, const T* Q) {
  int64_t at[2];
  T acc = 0;
  for (int r = 0, n = rel_rows(g, oa, ob, h, at); r < n; ++r)
    for (int64_t c = 0; c < g.D; ++c) acc += Q[c * g.Wp] * rel[at[r] + c];
  return acc;
}

// Slots of one block of queries: the slab row pointer of each slot's keys/values at lane 0, or null where
// the block reads nothing contiguous (row outside the image, or a border block of border='shift').
template <typename T>
void slot_pointers(const T* slab, int64_t kr0, int64_t C, const Tables& tb, const Geometry& g, int64_t i,
                   int64_t jb, const T** ptr) {
  for (int64_t a = 0; a < g.KH; ++a) {
    const bool va = tb.r_ok[i * g.KH + a];
    const T* row = slab + (tb.r_idx[i * g.KH + a] - kr0) * C * g.Wp;
    for (int64_t b = 0; b < g.KW; ++b) {
      const int64_t base = tb.base[jb * g.KW + b];
      ptr[a * g.KW + b] = (va && base != kIrregular) ? row + base : nullptr;
    }
  }
}

constexpr int64_t kChunk = 8;  // channels held in registers at once

// Probabilities and their gradients live in (B, heads, H, K, Wp) with the columns at PL and zero padding
// on both sides, so shifted vector loads in the backward read zeros past the image.
template <typename T>
inline T* prob_row(T* base, const Geometry& g, int64_t b, int64_t h, int64_t i, int64_t t) {
  return base + (((b * g.NH + h) * g.H + i) * g.K + t) * g.Wp + g.PL;
}
template <typename T>
inline const T* prob_row(const T* base, const Geometry& g, int64_t b, int64_t h, int64_t i, int64_t t) {
  return base + (((b * g.NH + h) * g.H + i) * g.K + t) * g.Wp + g.PL;
}
template <typename T>
void zero_pads(T* base, const Geometry& g, int64_t b, int64_t h, int64_t i) {
  for (int64_t t = 0; t < g.K; ++t) {
    T* row = prob_row(base, g, b, h, i, t);
    std::fill(row - g.PL, row, T(0));
    std::fill(row + g.W, row + g.Wp - g.PL, T(0));
  }
}

// S[t] += sum over channels of x[c] (lanes) * slot t's row[c], for every slot with a pointer.
template <typename T>
void dot_slots(const T* x, const T* const* ptr, int64_t K, int64_t C, int64_t Wp, vec<T>* S) {
  int64_t c0 = 0;
  for (; c0 + kChunk <= C; c0 += kChunk) {
    vec<T> xv[kChunk];
#pragma GCC unroll 8
    for (int64_t u = 0; u < kChunk; ++u) xv[u] = loadu(x + (c0 + u) * Wp);
    for (int64_t t = 0; t < K; ++t) {
      const T* p = ptr[t];
      if (!p) continue;
      vec<T> acc = S[t], acc1 = {};  // two chains: half the latency between dependent multiply-adds
#pragma GCC unroll 8
      for (int64_t u = 0; u < kChunk; u += 2) {
        acc += xv[u] * loadu(p + (c0 + u) * Wp);
        acc1 += xv[u + 1] * loadu(p + (c0 + u + 1) * Wp);
      }
      S[t] = acc + acc1;
    }
  }
  for (; c0 < C; ++c0) {
    const vec<T> xv = loadu(x + c0 * Wp);
    for (int64_t t = 0; t < K; ++t)
      if (ptr[t]) S[t] += xv * loadu(ptr[t] + c0 * Wp);
  }
}

// out[c] (lanes) += sum over slots of w[t] * slot t's row[c], for every slot with a pointer.
template <typename T>
void weigh_slots(const vec<T>* w, const T* const* ptr, int64_t K, int64_t C, int64_t Wp, vec<T>* out) {
  int64_t c0 = 0;
  for (; c0 + kChunk <= C; c0 += kChunk) {
    vec<T> acc[kChunk];
#pragma GCC unroll 8
    for (int64_t u = 0; u < kChunk; ++u) acc[u] = out[c0 + u];
    for (int64_t t = 0; t < K; ++t) {
      const T* p = ptr[t];
      if (!p) continue;
      const vec<T> wt = w[t];
#pragma GCC unroll 8
      for (int64_t u = 0; u < kChunk; ++u) acc[u] += wt * loadu(p + (c0 + u) * Wp);
    }
#pragma GCC unroll 8
    for (int64_t u = 0; u < kChunk; ++u) out[c0 + u] = acc[u];
  }
  for (; c0 < C; ++c0)
    for (int64_t t = 0; t < K; ++t)
      if (ptr[t]) out[c0] += w[t] * loadu(ptr[t] + c0 * Wp);
}

// Two query rows whose windows are one key row apart (i and i + 1, row dilation 1, fixed windows) share
// KH - 1 key rows: rows[m], m = 0..KH, is slot row m of query row i and slot row m - 1 of row i + 1 (null
// outside the image), base[b] the column offset of slot column b. Each key vector is loaded once for both
// query rows, which halves the loads of the two hottest loops.
template <typename T>
void dot_slots_pair(const T* xa, const T* xb, const T* const* rows, const int64_t* base, int64_t KH, int64_t KW,
                    int64_t C, int64_t Wp, vec<T>* Sa, vec<T>* Sb) {
  for (int64_t m = 0; m <= KH; ++m)  // slots outside the image score 0 (and are masked later)
    if (!rows[m])
      for (int64_t b = 0; b < KW; ++b) {
        if (m < KH) Sa[m * KW + b] = vec<T>{};
        if (m > 0) Sb[(m - 1) * KW + b] = vec<T>{};
      }
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, C - c0);
    vec<T> va[kChunk] = {}, vb[kChunk] = {};
    for (int64_t u = 0; u < cn; ++u) va[u] = loadu(xa + (c0 + u) * Wp), vb[u] = loadu(xb + (c0 + u) * Wp);
    for (int64_t m = 0; m <= KH; ++m) {
      if (!rows[m]) continue;
      const bool use_a = m < KH, use_b = m > 0, first = c0 == 0;
      for (int64_t b = 0; b < KW; ++b) {
        const T* p = rows[m] + base[b] + c0 * Wp;
        vec<T> sa = {}, sb = {};
        if (cn == kChunk) {  // two chains per query row: half the latency between dependent multiply-adds
          vec<T> sa1 = {}, sb1 = {};
#pragma GCC unroll 8
          for (int64_t u = 0; u < kChunk; u += 2) {
            const vec<T> k0 = loadu(p + u * Wp), k1 = loadu(p + (u + 1) * Wp);
            sa += va[u] * k0;
            sb += vb[u] * k0;
            sa1 += va[u + 1] * k1;
            sb1 += vb[u + 1] * k1;
          }
          sa += sa1, sb += sb1;
        } else {
          for (int64_t u = 0; u < cn; ++u) {
            const vec<T> kv = loadu(p + u * Wp);
            sa += va[u] * kv;
            sb += vb[u] * kv;
          }
        }
        if (use_a) Sa[m * KW + b] = first ? sa : Sa[m * KW + b] + sa;
        if (use_b) Sb[(m - 1) * KW + b] = first ? sb : Sb[(m - 1) * KW + b] + sb;
      }
    }
  }
}

// outa[c] += sum of wa[t] * value, outb[c] += sum of wb[t] * value over the shared rows (as above).
template <typename T>
void weigh_slots_pair(const vec<T>* wa, const vec<T>* wb, const T* const* rows, const int64_t* base, int64_t KH,
                      int64_t KW, int64_t C, int64_t Wp, vec<T>* outa, vec<T>* outb) {
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, C - c0);
    vec<T> aa[kChunk] = {}, ab[kChunk] = {};
    for (int64_t m = 0; m <= KH; ++m) {
      if (!rows[m]) continue;
      for (int64_t b = 0; b < KW; ++b) {
        const vec<T> xa = m < KH ? wa[m * KW + b] : vec<T>{}, xb = m > 0 ? wb[(m - 1) * KW + b] : vec<T>{};
        const T* p = rows[m] + base[b] + c0 * Wp;
        if (cn == kChunk) {
#pragma GCC unroll 8
          for (int64_t u = 0; u < kChunk; ++u) {
            const vec<T> kv = loadu(p + u * Wp);
            aa[u] += xa * kv;
            ab[u] += xb * kv;
          }
        } else {
          for (int64_t u = 0; u < cn; ++u) {
            const vec<T> kv = loadu(p + u * Wp);
            aa[u] += xa * kv;
            ab[u] += xb * kv;
          }
        }
      }
    }
    for (int64_t u = 0; u < cn; ++u) outa[c0 + u] = aa[u], outb[c0 + u] = ab[u];
  }
}

// Whether query rows i and i + 1 can be paired: fixed windows whose slot rows are one key row apart.
inline bool pairable(const Tables& tb, const Geometry& g, bool fixed, int64_t i, int64_t i1) {
  if (!fixed || i + 1 >= i1) return false;
  for (int64_t a = 0; a + 1 < g.KH; ++a)
    if (tb.r_idx[(i + 1) * g.KH + a] != tb.r_idx[i * g.KH + a + 1] ||
        tb.r_ok[(i + 1) * g.KH + a] != tb.r_ok[i * g.KH + a + 1])
      return false;
  return true;
}

// The KH + 1 shared key rows of the pair (i, i + 1) in a slab, null outside the image.
template <typename T>
void pair_rows(const T* slab, int64_t kr0, int64_t C, const Tables& tb, const Geometry& g, int64_t i,
               const T** rows) {
  for (int64_t m = 0; m <= g.KH; ++m) {
    const int64_t q = m < g.KH ? i : i + 1, a = m < g.KH ? m : g.KH - 1;
    rows[m] = tb.r_ok[q * g.KH + a] ? slab + (tb.r_idx[q * g.KH + a] - kr0) * C * g.Wp : nullptr;
  }
}

// R[t] += q . r[t] for the n rows r[t] of a table that are not null (lanes = the block's queries). The
// channels go in chunks held in registers, each table value broadcast once per row: a row at a time,
// every product would reload its query channel (three loads per multiply-add).
template <typename T>
void table_dots(const T* Qt, const T* const* r, int64_t n, const Geometry& g, int64_t j0, vec<T>* R) {
  for (int64_t c0 = 0; c0 < g.D; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, g.D - c0);
    vec<T> xv[kChunk] = {};
    for (int64_t u = 0; u < cn; ++u) xv[u] = loadu(Qt + (c0 + u) * g.Wp + j0);
    for (int64_t t = 0; t < n; ++t) {
      const T* rt = r[t];
      if (!rt) continue;
      vec<T> acc = R[t];
      if (cn == kChunk) {  // two chains, as in dot_slots
        vec<T> acc1 = {};
#pragma GCC unroll 8
        for (int64_t u = 0; u < kChunk; u += 2) {
          acc += xv[u] * rt[c0 + u];
          acc1 += xv[u + 1] * rt[c0 + u + 1];
        }
        acc += acc1;
      } else {
        for (int64_t u = 0; u < cn; ++u) acc += xv[u] * rt[c0 + u];
      }
      R[t] = acc;
    }
  }
}

// R[t] = q . rel(offset of slot t) for the regular slots of one block (lanes = its queries), the rest
// left as they are. A split table costs k_h + k_w dot products per query, not k_h k_w: one per row
// offset and one per column offset, summed per slot.
template <typename T>
void rel_scores(const T* Qt, const T* rel, const Tables& tb, const Geometry& g, int64_t h, int64_t i, int64_t jb,
                bool zeros, vec<T>* R) {
  thread_local std::vector<const T*> rp, dp;
  thread_local std::vector<vec<T>> parts;
  const int64_t j0 = jb * kLanes<T>;
  if (g.split_rel) {  // parts: KH row terms, then KW column terms
    rp.assign(g.KH + g.KW, nullptr);
    parts.assign(g.KH + g.KW, vec<T>{});
    for (int64_t a = 0; a < g.KH; ++a)
      if (tb.r_ok[i * g.KH + a] || zeros) rp[a] = rel + (tb.r_off[i * g.KH + a] * g.NH + h) * g.D;
    for (int64_t b = 0; b < g.KW; ++b)
      if (tb.base[jb * g.KW + b] != kIrregular) rp[g.KH + b] = rel + ((g.TH + tb.c_off[j0 * g.KW + b]) * g.NH + h) * g.D;
    dp.assign(rp.begin(), rp.end());  // the rows to take dot products with: zero rows leave their part 0
    if (g.rel_zero)
      for (auto& r : dp)
        if (r && g.rel_zero[(r - rel) / g.D]) r = nullptr;
    table_dots(Qt, dp.data(), g.KH + g.KW, g, j0, parts.data());
    for (int64_t a = 0; a < g.KH; ++a)
      for (int64_t b = 0; b < g.KW; ++b)
        if (rp[a] && rp[g.KH + b]) R[a * g.KW + b] = parts[a] + parts[g.KH + b];
    return;
  }
  rp.assign(g.K, nullptr);
  for (int64_t a = 0; a < g.KH; ++a) {
    if (!tb.r_ok[i * g.KH + a] && !zeros) continue;
    const int64_t oa = tb.r_off[i * g.KH + a];
    for (int64_t b = 0; b < g.KW; ++b)
      if (tb.base[jb * g.KW + b] != kIrregular) rp[a * g.KW + b] = rel_at(rel, g, oa, tb.c_off[j0 * g.KW + b], h);
  }
  for (int64_t t = 0; t < g.K; ++t)
    if (rp[t]) R[t] = vec<T>{};
  table_dots(Qt, rp.data(), g.K, g, j0, R);
}

// Scores from the dot products of the regular slots already in S[t]: scale, rel, bias and border mask;
// the dot products of border lanes (irregular blocks) are computed here, one lane at a time.
template <typename T>
void finish_scores(const T* Qt, const T* Kslab, int64_t kr0, const T* rel, const T* bias, const Tables& tb,
                   const std::vector<vec<T>>& masks, const Geometry& g, int64_t h, int64_t i, int64_t jb, int64_t n,
                   T scale, bool zeros, vec<T>* S) {
  constexpr int64_t L = kLanes<T>;
  const int64_t j0 = jb * L;
  const T ninf = -std::numeric_limits<T>::infinity();
  thread_local std::vector<vec<T>> R;
  if (rel) {
    R.resize(g.K);
    rel_scores(Qt, rel, tb, g, h, i, jb, zeros, R.data());
  }
  for (int64_t a = 0; a < g.KH; ++a) {
    const int64_t ra = tb.r_idx[i * g.KH + a], oa = tb.r_off[i * g.KH + a];
    const bool va = tb.r_ok[i * g.KH + a];
    const T* Krow = Kslab + (ra - kr0) * g.D * g.Wp;
    for (int64_t b = 0; b < g.KW; ++b) {
      const int64_t t = a * g.KW + b, base = tb.base[jb * g.KW + b];
      if (!va && !zeros) {
        S[t] = splat<T>(ninf);
        continue;
      }
      if (base != kIrregular) {  // contiguous keys, one rel/bias offset: the dot product is in S[t]
        vec<T> acc = S[t] * scale;
        const int64_t ob = tb.c_off[j0 * g.KW + b];
        if (rel) acc += R[t];
        if (bias) acc += bias[(h * g.TH + oa) * g.TW + ob];
        if (!zeros) acc += masks[jb * g.KW + b];
        S[t] = acc;
        continue;
      }
      vec<T> s = {};
      for (int64_t l = 0; l < n; ++l) {  // border lanes, one at a time
        const int64_t j = j0 + l, cb = tb.c_idx[j * g.KW + b], ob = tb.c_off[j * g.KW + b];
        const bool inside = va && tb.c_ok[j * g.KW + b];
        if (!inside && !zeros) {
          s[l] = ninf;
          continue;
        }
        T acc = 0;
        if (inside)
          for (int64_t c = 0; c < g.D; ++c) acc += Qt[c * g.Wp + j] * Krow[c * g.Wp + cb];
        acc *= scale;
        if (rel) acc += rel_dot(rel, g, oa, ob, h, Qt + j);
        if (bias) acc += bias[(h * g.TH + oa) * g.TW + ob];
        s[l] = acc;
      }
      S[t] = s;  // lanes >= n stay 0: finite, never stored
    }
  }
}

// Scores of one block of L queries (row i, columns j0..j0+n) for every slot: S[t] (lanes).
template <typename T>
void block_scores(const T* Qt, const T* Kslab, int64_t kr0, const T* rel, const T* bias, const Tables& tb,
                  const std::vector<vec<T>>& masks, const Geometry& g, int64_t h, int64_t i, int64_t jb, int64_t n,
                  T scale, bool zeros, const T** ptr, vec<T>* S) {
  slot_pointers(Kslab, kr0, g.D, tb, g, i, jb, ptr);
  std::fill(S, S + g.K, vec<T>{});
  dot_slots(Qt + jb * kLanes<T>, ptr, g.K, g.D, g.Wp, S);
  finish_scores(Qt, Kslab, kr0, rel, bias, tb, masks, g, h, i, jb, n, scale, zeros, S);
}

// S[t] = exp(S[t] - max) over the slots, lane-wise; returns 1 / their sum, the normalisation applied to
// the saved probabilities and to the weighted sum (C values per lane, not K probabilities).
template <typename T>
vec<T> softmax_slots(vec<T>* S, int64_t K) {
  vec<T> m = S[0];
  for (int64_t t = 1; t < K; ++t) m = S[t] > m ? S[t] : m;
  vec<T> sum = {};
  for (int64_t t = 0; t < K; ++t) {
    S[t] = vexp_nonpositive<T>(S[t] - m);
    sum += S[t];
  }
  return T(1) / sum;
}

template <typename T>
void normalise(vec<T>* O, int64_t C, vec<T> inv) {
  for (int64_t c = 0; c < C; ++c) O[c] *= inv;
}

// acc[c] (lanes) += sum over slots of w[t] * value of slot t: the weighted sum of values or keys.
template <typename T>
void block_gather(const vec<T>* w, const T* slab, int64_t kr0, int64_t C, const Tables& tb, const Geometry& g,
                  int64_t i, int64_t jb, int64_t n, const T** ptr, vec<T>* acc) {
  constexpr int64_t L = kLanes<T>;
  const int64_t j0 = jb * L;
  slot_pointers(slab, kr0, C, tb, g, i, jb, ptr);
  weigh_slots(w, ptr, g.K, C, g.Wp, acc);
  for (int64_t a = 0; a < g.KH; ++a) {
    if (!tb.r_ok[i * g.KH + a]) continue;  // outside rows hold zero (or masked) keys and values
    const T* row = slab + (tb.r_idx[i * g.KH + a] - kr0) * C * g.Wp;
    for (int64_t b = 0; b < g.KW; ++b) {
      const int64_t t = a * g.KW + b;
      if (tb.base[jb * g.KW + b] != kIrregular) continue;  // done above
      for (int64_t l = 0; l < n; ++l) {
        const int64_t j = j0 + l;
        if (!tb.c_ok[j * g.KW + b]) continue;
        const int64_t cb = tb.c_idx[j * g.KW + b];
        for (int64_t c = 0; c < C; ++c) acc[c][l] += w[t][l] * row[c * g.Wp + cb];
      }
    }
  }
}

// Write acc[c] (lanes = columns j0..j0+n) of head h, row i into y laid out as ly. Adjacent channels: blocks
// of L channels go through an in-register transpose and masked stores of each pixel's channels. Adjacent
// columns: one masked store per channel.
template <typename T>
void store_block(const vec<T>* acc, int64_t C, const Layout& ly, const Geometry& g, int64_t b, int64_t h,
                 int64_t i, int64_t j0, int64_t n, T* y) {
  constexpr int64_t L = kLanes<T>;
  T* dst = y + ly.at(b, i, j0, h);
  if (ly.sc != 1) {  // ly.sj == 1
    for (int64_t c = 0; c < C; ++c) store_first(dst + c * ly.sc, acc[c], n);
    return;
  }
  vec<T> tile[L];
  const int64_t stride = ly.sj;
  for (int64_t c0 = 0; c0 < C; c0 += L) {
    const int64_t m = std::min(L, C - c0);
    // Loops of constant length with the bounds as conditions: the tile stays in registers.
#pragma GCC unroll 16
    for (int64_t c = 0; c < L; ++c) tile[c] = c < m ? acc[c0 + c] : vec<T>{};
    transpose_tile<T>(tile);
#pragma GCC unroll 16
    for (int64_t l = 0; l < L; ++l)
      if (l < n) store_first(dst + l * stride + c0, tile[l], m);
  }
}

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, const T* rel, const T* bias, const Tables& tb, T scale,
                  bool zeros, bool fixed, const Geometry& g, T* out, T* probs) {
  constexpr int64_t L = kLanes<T>;
  const Split sp = split_rows(g);
  const int64_t nb = (g.W + L - 1) / L;
  const std::vector<vec<T>> masks = lane_masks<T>(tb, g);
  at::parallel_for(0, g.B * g.NH * sp.nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Kslab, Vslab, Qt(2 * g.D * g.Wp, T(0));
    std::vector<vec<T>> S(g.K), S2(g.K), O(g.DV), O2(g.DV);
    std::vector<const T*> ptr(g.K), rows(g.KH + 1);
    for (int64_t task = begin; task < end; ++task) {
      const auto [b, h, i0, i1, kr0] = load_key_slabs(k, v, tb, g, sp, task, Kslab, Vslab);
      RowPrefetch<T> pf;
      if (task + 1 < end) {  // the next task's queries, keys and values
        const Task nx = task_of(tb, g, sp, task + 1);
        const auto [nk0, nk1] = key_rows(tb, g, nx.i0, nx.i1);
        pf.add(k, g.D, g.lk, g, nx.b, nx.h, nk0, nk1);
        pf.add(v, g.DV, g.lv, g, nx.b, nx.h, nk0, nk1);
        pf.add(q, g.D, g.lq, g, nx.b, nx.h, nx.i0, nx.i1);
      }
      const int64_t pf_step = (pf.pixels() + (i1 - i0) * nb - 1) / ((i1 - i0) * nb);  // per row and block
      for (int64_t i = i0; i < i1; ++i) {
        if (pairable(tb, g, fixed, i, i1)) {  // rows i and i + 1 together
          to_slab(q, g.D, g.lq, g, b, h, i, i + 2, Qt.data());
          const T* Qa = Qt.data() + g.PL;
          const T* Qb = Qa + g.D * g.Wp;
          for (int64_t jb = 0; jb < nb; ++jb) {
            const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
            const int64_t* base = tb.base.data() + jb * g.KW;
            pair_rows(Kslab.data() + g.PL, kr0, g.D, tb, g, i, rows.data());
            dot_slots_pair(Qa + j0, Qb + j0, rows.data(), base, g.KH, g.KW, g.D, g.Wp, S.data(), S2.data());
            finish_scores(Qa, Kslab.data() + g.PL, kr0, rel, bias, tb, masks, g, h, i, jb, n, scale, zeros, S.data());
            finish_scores(Qb, Kslab.data() + g.PL, kr0, rel, bias, tb, masks, g, h, i + 1, jb, n, scale, zeros,
                          S2.data());
            const vec<T> inv = softmax_slots<T>(S.data(), g.K), inv2 = softmax_slots<T>(S2.data(), g.K);
            if (probs)
              for (int64_t t = 0; t < g.K; ++t) {
                store_first(prob_row(probs, g, b, h, i, t) + j0, S[t] * inv, n);
                store_first(prob_row(probs, g, b, h, i + 1, t) + j0, S2[t] * inv2, n);
              }
            pair_rows(Vslab.data() + g.PL, kr0, g.DV, tb, g, i, rows.data());
            weigh_slots_pair(S.data(), S2.data(), rows.data(), base, g.KH, g.KW, g.DV, g.Wp, O.data(), O2.data());
            normalise<T>(O.data(), g.DV, inv), normalise<T>(O2.data(), g.DV, inv2);
            store_block(O.data(), g.DV, g.lo, g, b, h, i, j0, n, out);
            store_block(O2.data(), g.DV, g.lo, g, b, h, i + 1, j0, n, out);
            pf.advance(2 * pf_step);
          }
          if (probs) zero_pads(probs, g, b, h, i), zero_pads(probs, g, b, h, i + 1);
          ++i;
          continue;
        }
        to_slab(q, g.D, g.lq, g, b, h, i, i + 1, Qt.data());
        for (int64_t jb = 0; jb < nb; ++jb) {
          const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
          block_scores(Qt.data() + g.PL, Kslab.data() + g.PL, kr0, rel, bias, tb, masks, g, h, i, jb, n, scale,
                       zeros, ptr.data(), S.data());
          const vec<T> inv = softmax_slots<T>(S.data(), g.K);
          if (probs)  // saved for the backward only
            for (int64_t t = 0; t < g.K; ++t) store_first(prob_row(probs, g, b, h, i, t) + j0, S[t] * inv, n);
          std::fill(O.begin(), O.end(), vec<T>{});
          block_gather(S.data(), Vslab.data() + g.PL, kr0, g.DV, tb, g, i, jb, n, ptr.data(), O.data());
          normalise<T>(O.data(), g.DV, inv);
          store_block(O.data(), g.DV, g.lo, g, b, h, i, j0, n, out);
          pf.advance(pf_step);
        }
        if (probs) zero_pads(probs, g, b, h, i);
      }
    }
  });
}

template <typename T>
struct KeysPass;

// Fixed windows: the rel gradient of a task's rows [i0, i0 + rows) of head h, image b, added to drel:
// row u of the table gets sum over the task's queries p of dS_u(p) q_p, where dS_u(p) (the score
// gradient its term takes) is at dsu[(u * rows + r) * Wr + j] (zero past column W). With adjacent
// channels each pixel's channels form a vector, with adjacent columns each channel's row does (summed
// across lanes at the end); the terms' sums stay in registers, a group at a time: no per-block
// read-modify-write of accumulators.
template <typename T>
void rel_gradient(const T* q, const T* dsu, int64_t terms, int64_t rows, int64_t Wr, const Geometry& g, int64_t b,
                  int64_t h, int64_t i0, T* drel) {
  constexpr int64_t L = kLanes<T>, kGroup = 16;
  const Layout& lq = g.lq;
  if (lq.sc != 1) {  // adjacent columns
    for (int64_t c = 0; c < g.D; ++c)
      for (int64_t u0 = 0; u0 < terms; u0 += kGroup) {
        const int64_t un = std::min(kGroup, terms - u0);
        vec<T> acc[kGroup] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const T* qrow = q + lq.at(b, i0 + r, 0, h) + c * lq.sc;
          const T* drow = dsu + (u0 * rows + r) * Wr;
          for (int64_t j0 = 0; j0 < g.W; j0 += L) {
            const vec<T> qv = load_first(qrow + j0, std::min(L, g.W - j0));
#pragma GCC unroll 16
            for (int64_t u = 0; u < kGroup; ++u)
              if (u < un) acc[u] += loadu(drow + u * rows * Wr + j0) * qv;
          }
        }
        for (int64_t u = 0; u < un; ++u) {
          T total = 0;
          for (int64_t l = 0; l < L; ++l) total += acc[u][l];
          drel[fixed_rel_at(g, u0 + u, h) + c] += total;
        }
      }
    return;
  }
  for (int64_t c0 = 0; c0 < g.D; c0 += L) {
    const int64_t m = std::min(L, g.D - c0);
    for (int64_t u0 = 0; u0 < terms; u0 += kGroup) {
      const int64_t un = std::min(kGroup, terms - u0);
      vec<T> acc[kGroup] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const T* qrow = q + lq.at(b, i0 + r, 0, h) + c0;
        const T* drow = dsu + (u0 * rows + r) * Wr;
        for (int64_t j = 0; j < g.W; ++j) {
          const vec<T> qv = load_first(qrow + j * lq.sj, m);
          // A loop of constant length with the bound as a condition: the sums stay in registers.
#pragma GCC unroll 16
          for (int64_t u = 0; u < kGroup; ++u)
            if (u < un) acc[u] += drow[u * rows * Wr + j] * qv;
        }
      }
      for (int64_t u = 0; u < un; ++u) {
        T* gr = drel + fixed_rel_at(g, u0 + u, h) + c0;
        for (int64_t l = 0; l < m; ++l) gr[l] += acc[u][l];
      }
    }
  }
}

// Pass 1, per query block: dS = P (dP - sum P dP), dq, and the rel/bias gradients (per-thread sums);
// then_keys: the key pass of each task, run after it on the same thread (tasks of whole images).
template <typename T>
void backward_queries(const T* dout, const T* q, const T* k, const T* v, const T* rel, const T* probs,
                      const Tables& tb, T scale, const Geometry& g, bool fixed, T* dq, T* ds, T* drel, T* dbias,
                      const KeysPass<T>* then_keys) {
  constexpr int64_t L = kLanes<T>;
  const Split sp = split_rows(g);
  const int64_t nb = (g.W + L - 1) / L;
  const int64_t nrel = drel ? g.rel_numel() : 0, nbias = dbias ? g.NH * g.TH * g.TW : 0;
  std::vector<std::vector<T>> rel_parts(at::get_num_threads(), std::vector<T>(nrel, T(0)));
  std::vector<std::vector<T>> bias_parts(at::get_num_threads(), std::vector<T>(nbias, T(0)));
  at::parallel_for(0, g.B * g.NH * sp.nchunks, 1, [&](int64_t begin, int64_t end) {
    T* my_rel = nrel ? rel_parts[at::get_thread_num()].data() : nullptr;
    T* my_bias = nbias ? bias_parts[at::get_thread_num()].data() : nullptr;
    std::vector<T> Kslab, Vslab, Qt(2 * g.D * g.Wp, T(0)), dOt(2 * g.DV * g.Wp, T(0));
    std::vector<vec<T>> P(g.K), dP(g.K), dQ(g.D), P2(g.K), dP2(g.K), dQ2(g.D);
    std::vector<const T*> ptr(g.K), rows(g.KH + 1);
    // Fixed windows: every slot has one rel/bias offset. The bias gradients are summed lane-wise over the
    // task and reduced across lanes at its end; each rel term's dS is kept, (term, row, column), for
    // rel_gradient at the task's end.
    const int64_t rel_terms = g.split_rel ? g.KH + g.KW : g.K;  // embeddings a block's scores use
    const int64_t Wr = nb * L;
    std::vector<T> rel_ds(fixed && my_rel ? rel_terms * sp.chunk * Wr : 0);
    std::vector<vec<T>> bias_acc(fixed && my_bias ? g.K : 0);
    for (int64_t task = begin; task < end; ++task) {
      const Task tk = load_key_slabs(k, v, tb, g, sp, task, Kslab, Vslab);
      const int64_t b = tk.b, h = tk.h, i0 = tk.i0, i1 = tk.i1, kr0 = tk.kr0;  // named for the lambdas
      // dS = P (dP - sum P dP) for one query row's block, stored; dP holds dS afterwards.
      auto scores_grad = [&](int64_t i, int64_t j0, int64_t n, vec<T>* P, vec<T>* dP) {
        vec<T> total = {};
        for (int64_t t = 0; t < g.K; ++t) total += P[t] * dP[t];
        for (int64_t t = 0; t < g.K; ++t) {
          dP[t] = P[t] * (dP[t] - total);
          store_first(prob_row(ds, g, b, h, i, t) + j0, dP[t], n);
        }
      };
      // dq = scale * (sum dS k_t, in dQ) + sum dS rel_t, the rel/bias gradients, and the store.
      auto query_grad = [&](int64_t i, const T* Q0, int64_t jb, int64_t n, const vec<T>* dS, vec<T>* dQ) {
        const int64_t j0 = jb * L;
        for (int64_t c = 0; c < g.D; ++c) dQ[c] *= scale;
        if (fixed && (rel || my_bias)) {
          // Embedding term u with score gradient d (lanes): its share of dq and of its gradient.
          auto rel_term = [&](int64_t u, const vec<T>& d) {
            const int64_t at = fixed_rel_at(g, u, h);
            if (!g.rel_zero || !g.rel_zero[at / g.D])  // a zero row adds nothing to dq (its gradient, below, counts)
              for (int64_t c = 0; c < g.D; ++c) dQ[c] += d * rel[at + c];
            if (my_rel) storeu(rel_ds.data() + (u * (i1 - i0) + i - i0) * Wr + j0, d);
          };
          if (rel && g.split_rel) {  // a row's term takes the dS of its slots, and so does a column's
            for (int64_t a = 0; a < g.KH; ++a) {
              vec<T> d = {};
              for (int64_t bb = 0; bb < g.KW; ++bb) d += dS[a * g.KW + bb];
              rel_term(a, d);
            }
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              vec<T> d = {};
              for (int64_t a = 0; a < g.KH; ++a) d += dS[a * g.KW + bb];
              rel_term(g.KH + bb, d);
            }
          }
          for (int64_t t = 0; t < g.K; ++t) {
            if (rel && !g.split_rel) rel_term(t, dS[t]);
            if (my_bias) bias_acc[t] += dS[t];
          }
        } else if (rel || my_bias) {
          for (int64_t a = 0; a < g.KH; ++a) {
            const int64_t oa = tb.r_off[i * g.KH + a];
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb;
              for (int64_t l = 0; l < n; ++l) {
                const T d = dS[t][l];
                if (d == T(0)) continue;
                const int64_t j = j0 + l, ob = tb.c_off[j * g.KW + bb];
                if (rel) {
                  int64_t at[2];
                  for (int r = 0, nr = rel_rows(g, oa, ob, h, at); r < nr; ++r) {
                    for (int64_t c = 0; c < g.D; ++c) dQ[c][l] += d * rel[at[r] + c];
                    if (my_rel)
                      for (int64_t c = 0; c < g.D; ++c) my_rel[at[r] + c] += d * Q0[c * g.Wp + j];
                  }
                }
                if (my_bias) my_bias[(h * g.TH + oa) * g.TW + ob] += d;
              }
            }
          }
        }
        store_block(dQ, g.D, g.lgq, g, b, h, i, j0, n, dq);
      };
      for (int64_t i = i0; i < i1; ++i) {
        if (pairable(tb, g, fixed, i, i1)) {  // rows i and i + 1 together (see dot_slots_pair)
          to_slab(q, g.D, g.lq, g, b, h, i, i + 2, Qt.data());
          to_slab(dout, g.DV, g.lo, g, b, h, i, i + 2, dOt.data());
          const T *Qa = Qt.data() + g.PL, *Qb = Qa + g.D * g.Wp;
          const T *dOa = dOt.data() + g.PL, *dOb = dOa + g.DV * g.Wp;
          for (int64_t jb = 0; jb < nb; ++jb) {
            const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
            const int64_t* base = tb.base.data() + jb * g.KW;
            for (int64_t t = 0; t < g.K; ++t) {
              P[t] = load_first(prob_row(probs, g, b, h, i, t) + j0, n);
              P2[t] = load_first(prob_row(probs, g, b, h, i + 1, t) + j0, n);
            }
            pair_rows(Vslab.data() + g.PL, kr0, g.DV, tb, g, i, rows.data());
            dot_slots_pair(dOa + j0, dOb + j0, rows.data(), base, g.KH, g.KW, g.DV, g.Wp, dP.data(), dP2.data());
            scores_grad(i, j0, n, P.data(), dP.data());
            scores_grad(i + 1, j0, n, P2.data(), dP2.data());
            pair_rows(Kslab.data() + g.PL, kr0, g.D, tb, g, i, rows.data());
            weigh_slots_pair(dP.data(), dP2.data(), rows.data(), base, g.KH, g.KW, g.D, g.Wp, dQ.data(),
                             dQ2.data());
            query_grad(i, Qa, jb, n, dP.data(), dQ.data());
            query_grad(i + 1, Qb, jb, n, dP2.data(), dQ2.data());
          }
          zero_pads(ds, g, b, h, i), zero_pads(ds, g, b, h, i + 1);
          ++i;
          continue;
        }
        to_slab(q, g.D, g.lq, g, b, h, i, i + 1, Qt.data());
        to_slab(dout, g.DV, g.lo, g, b, h, i, i + 1, dOt.data());
        const T* Q0 = Qt.data() + g.PL;  // column j of the row at [c * Wp + j]
        const T* dO0 = dOt.data() + g.PL;
        for (int64_t jb = 0; jb < nb; ++jb) {
          const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
          for (int64_t t = 0; t < g.K; ++t) P[t] = load_first(prob_row(probs, g, b, h, i, t) + j0, n);
          // dP[t] = dout . v_t: regular slots blocked, border lanes one at a time.
          std::fill(dP.begin(), dP.end(), vec<T>{});
          slot_pointers(Vslab.data() + g.PL, kr0, g.DV, tb, g, i, jb, ptr.data());
          dot_slots(dO0 + j0, ptr.data(), g.K, g.DV, g.Wp, dP.data());
          for (int64_t a = 0; a < g.KH; ++a) {
            if (!tb.r_ok[i * g.KH + a]) continue;
            const T* Vrow = Vslab.data() + g.PL + (tb.r_idx[i * g.KH + a] - kr0) * g.DV * g.Wp;
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              if (tb.base[jb * g.KW + bb] != kIrregular) continue;
              for (int64_t l = 0; l < n; ++l) {
                const int64_t j = j0 + l;
                if (!tb.c_ok[j * g.KW + bb]) continue;
                const int64_t cb = tb.c_idx[j * g.KW + bb];
                T s = 0;
                for (int64_t c = 0; c < g.DV; ++c) s += dO0[c * g.Wp + j] * Vrow[c * g.Wp + cb];
                dP[a * g.KW + bb][l] = s;
              }
            }
          }
          scores_grad(i, j0, n, P.data(), dP.data());
          std::fill(dQ.begin(), dQ.end(), vec<T>{});
          block_gather(dP.data(), Kslab.data() + g.PL, kr0, g.D, tb, g, i, jb, n, ptr.data(), dQ.data());
          query_grad(i, Q0, jb, n, dP.data(), dQ.data());
        }
        zero_pads(ds, g, b, h, i);
      }
      if (!rel_ds.empty()) rel_gradient(q, rel_ds.data(), rel_terms, i1 - i0, Wr, g, b, h, i0, my_rel);
      for (int64_t t = 0; t < g.K && !bias_acc.empty(); ++t) {
        const int64_t oa = t / g.KW + g.KH / 2, ob = t % g.KW + g.KW / 2;
        for (int64_t l = 0; l < L; ++l) my_bias[(h * g.TH + oa) * g.TW + ob] += bias_acc[t][l];
        bias_acc[t] = vec<T>{};
      }
      if (then_keys) then_keys->run(task, task + 1);
    }
  });
  for (auto& part : rel_parts)
    for (int64_t x = 0; x < nrel; ++x) drel[x] += part[x];
  for (auto& part : bias_parts)
    for (int64_t x = 0; x < nbias; ++x) dbias[x] += part[x];
}

// acc[c] (lanes = key columns kc0..) += sum over pairs (query row, slot row) and slot columns of
// w(slot)[kc - off] * x(query row)[c][kc - off], off = the slot's column shift: the gather form of the
// key/value gradients for windows at fixed offsets.
template <typename T>
void gather_fixed(const T* w0, const T* x0, int64_t xstride, int64_t C, const int64_t* pairs, int64_t npairs,
                  int64_t qr0, const Geometry& g, int64_t b, int64_t h, int64_t kc0, int64_t col_dilation, T scale,
                  vec<T>* acc) {
  const int64_t r = g.KW / 2;
  int64_t c0 = 0;
  for (; c0 < C; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, C - c0);
    vec<T> a[kChunk] = {};
    for (int64_t x = 0; x < npairs; ++x) {
      const int64_t i = pairs[2 * x], sa = pairs[2 * x + 1];
      const T* wrow = prob_row(w0, g, b, h, i, sa * g.KW);
      const T* xrow = x0 + (i - qr0) * xstride;
      for (int64_t bb = 0; bb < g.KW; ++bb) {
        const int64_t at = kc0 - (bb - r) * col_dilation;
        const vec<T> wv = loadu(wrow + bb * g.Wp + at) * scale;
        if (cn == kChunk) {
#pragma GCC unroll 8
          for (int64_t u = 0; u < kChunk; ++u) a[u] += wv * loadu(xrow + (c0 + u) * g.Wp + at);
        } else {
          for (int64_t u = 0; u < cn; ++u) a[u] += wv * loadu(xrow + (c0 + u) * g.Wp + at);
        }
      }
    }
    for (int64_t u = 0; u < cn; ++u) acc[c0 + u] = a[u];
  }
}

// gather_fixed for two neighbouring key rows kr and kr + 1 at once (row dilation 1): query row i reaches
// them through slot rows kr - i + KH/2 and one more, and its q/dout vectors are loaded once for both.
template <typename T>
void gather_fixed_pair(const T* w0, const T* x0, int64_t xstride, int64_t C, int64_t kr, int64_t qr0,
                       const Geometry& g, int64_t b, int64_t h, int64_t kc0, int64_t col_dilation, T scale,
                       vec<T>* acc0, vec<T>* acc1) {
  constexpr int64_t L = kLanes<T>;
  const int64_t r = g.KW / 2, rr = g.KH / 2;
  const int64_t lo = std::max<int64_t>(0, kr - rr), hi = std::min(g.H - 1, kr + 1 + rr);
  // A slot row outside the window reads zeros (no branch in the inner loop).
  thread_local std::vector<T> zeros;
  if (static_cast<int64_t>(zeros.size()) < g.KW * g.Wp) zeros.assign(g.KW * g.Wp, T(0));
  const T* none = zeros.data() + g.PL;
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t cn = std::min(kChunk, C - c0);
    vec<T> a0[kChunk] = {}, a1[kChunk] = {};
    for (int64_t i = lo; i <= hi; ++i) {
      const int64_t s0 = kr - i + rr;  // slot row of key row kr for query row i; kr + 1 is s0 + 1
      const bool ok0 = s0 >= 0 && s0 < g.KH, ok1 = s0 + 1 >= 0 && s0 + 1 < g.KH;
      const T* w0row = ok0 ? prob_row(w0, g, b, h, i, s0 * g.KW) : none;
      const T* w1row = ok1 ? prob_row(w0, g, b, h, i, (s0 + 1) * g.KW) : none;
      const T* xrow = x0 + (i - qr0) * xstride;
      if (c0 == 0)  // the weights of the next key block: rows of a strided stream the hardware misses
        for (int64_t bb = 0; bb < g.KW; ++bb) {
          const int64_t next = kc0 + L - (bb - r) * col_dilation;
          __builtin_prefetch(w0row + bb * g.Wp + next);
          __builtin_prefetch(w1row + bb * g.Wp + next);
        }
      for (int64_t bb = 0; bb < g.KW; ++bb) {
        const int64_t at = kc0 - (bb - r) * col_dilation;
        const vec<T> wv0 = loadu(w0row + bb * g.Wp + at), wv1 = loadu(w1row + bb * g.Wp + at);
        if (cn == kChunk) {
#pragma GCC unroll 8
          for (int64_t u = 0; u < kChunk; ++u) {
            const vec<T> xv = loadu(xrow + (c0 + u) * g.Wp + at);
            a0[u] += wv0 * xv;
            a1[u] += wv1 * xv;
          }
        } else {
          for (int64_t u = 0; u < cn; ++u) {
            const vec<T> xv = loadu(xrow + (c0 + u) * g.Wp + at);
            a0[u] += wv0 * xv;
            a1[u] += wv1 * xv;
          }
        }
      }
    }
    for (int64_t u = 0; u < cn; ++u) acc0[c0 + u] = a0[u] * scale, acc1[c0 + u] = a1[u] * scale;
  }
}

// Whether the row windows are fixed with row dilation 1 (key row of slot a = query row + a - KH/2).
inline bool unit_row_windows(const Tables& tb, const Geometry& g, bool fixed) {
  if (!fixed) return false;
  for (int64_t i = 0; i < g.H; ++i)
    for (int64_t a = 0; a < g.KH; ++a)
      if (tb.r_ok[i * g.KH + a] && tb.r_idx[i * g.KH + a] != i + a - g.KH / 2) return false;
  return true;
}

// Pass 2, per key row: dk = scale sum dS q and dv = sum P dout over the queries whose window holds it.
// The tasks [begin, end) of one thread; `backward_keys` runs them all.
template <typename T>
struct KeysPass {
  const T *dout, *q, *probs, *ds;
  const Tables& tb;
  const int64_t* r_inv;
  int64_t mr;
  T scale;
  const Geometry& g;
  bool fixed;
  int64_t col_dilation;
  T *dk, *dv;
  Split sp;  // the tasks' rows, as split outside any parallel region (which sees one thread)

  void run(int64_t begin, int64_t end) const {
    const bool unit_rows = unit_row_windows(tb, g, fixed);
    constexpr int64_t L = kLanes<T>;
    const int64_t nb = (g.W + L - 1) / L;
    thread_local std::vector<T> Qslab, dOslab, dKt, dVt;
    thread_local std::vector<vec<T>> tmp, tmp2;
    dKt.resize(g.D * g.Wp), dVt.resize(g.DV * g.Wp);
    tmp.resize(std::max(g.D, g.DV)), tmp2.resize(std::max(g.D, g.DV));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.NH * sp.nchunks), h = (task / sp.nchunks) % g.NH;
      const int64_t k0 = (task % sp.nchunks) * sp.chunk, k1 = std::min(g.H, k0 + sp.chunk);
      const auto [qr0, qr1] = query_rows(r_inv, mr, g.H, k0, k1);
      if (qr1 > qr0) {
        prepare_slab(Qslab, qr1 - qr0, g.D, g);
        prepare_slab(dOslab, qr1 - qr0, g.DV, g);
        to_slab(q, g.D, g.lq, g, b, h, qr0, qr1, Qslab.data());
        to_slab(dout, g.DV, g.lo, g, b, h, qr0, qr1, dOslab.data());
      }
      const int64_t Ws = g.Wp;
      T* dK0 = dKt.data() + g.PL;  // column j (negative: padding) at [c * Ws + j]
      T* dV0 = dVt.data() + g.PL;
      if (fixed) {  // gather form: each key block sums its contributions in registers
        for (int64_t kr = k0; kr < k1; ++kr) {
          if (unit_rows && kr + 1 < k1) {  // two key rows at once
            for (int64_t kb = 0; kb < nb; ++kb) {
              const int64_t kc0 = kb * L, n = std::min(L, g.W - kc0);
              gather_fixed_pair(ds, Qslab.data() + g.PL, g.D * g.Wp, g.D, kr, qr0, g, b, h, kc0, col_dilation, scale,
                                tmp.data(), tmp2.data());
              store_block(tmp.data(), g.D, g.lgk, g, b, h, kr, kc0, n, dk);
              store_block(tmp2.data(), g.D, g.lgk, g, b, h, kr + 1, kc0, n, dk);
              gather_fixed_pair(probs, dOslab.data() + g.PL, g.DV * g.Wp, g.DV, kr, qr0, g, b, h, kc0, col_dilation,
                                T(1), tmp.data(), tmp2.data());
              store_block(tmp.data(), g.DV, g.lgv, g, b, h, kr, kc0, n, dv);
              store_block(tmp2.data(), g.DV, g.lgv, g, b, h, kr + 1, kc0, n, dv);
            }
            ++kr;
            continue;
          }
          int64_t npairs = 0;
          while (npairs < mr && r_inv[(kr * mr + npairs) * 2] >= 0) ++npairs;
          const int64_t* pairs = r_inv + kr * mr * 2;
          for (int64_t kb = 0; kb < nb; ++kb) {
            const int64_t kc0 = kb * L, n = std::min(L, g.W - kc0);
            gather_fixed(ds, Qslab.data() + g.PL, g.D * g.Wp, g.D, pairs, npairs, qr0, g, b, h, kc0, col_dilation,
                         scale, tmp.data());
            store_block(tmp.data(), g.D, g.lgk, g, b, h, kr, kc0, n, dk);
            gather_fixed(probs, dOslab.data() + g.PL, g.DV * g.Wp, g.DV, pairs, npairs, qr0, g, b, h, kc0,
                         col_dilation, T(1), tmp.data());
            store_block(tmp.data(), g.DV, g.lgv, g, b, h, kr, kc0, n, dv);
          }
        }
        continue;
      }
      for (int64_t kr = k0; kr < k1; ++kr) {
        std::fill(dKt.begin(), dKt.end(), T(0));
        std::fill(dVt.begin(), dVt.end(), T(0));
        for (int64_t x = 0; x < mr && r_inv[(kr * mr + x) * 2] >= 0; ++x) {
          const int64_t i = r_inv[(kr * mr + x) * 2], a = r_inv[(kr * mr + x) * 2 + 1];
          const T* Qrow = Qslab.data() + g.PL + (i - qr0) * g.D * g.Wp;
          const T* dOrow = dOslab.data() + g.PL + (i - qr0) * g.DV * g.Wp;
          const T* pp = prob_row(probs, g, b, h, i, 0);  // slot t at pp + t * Wp
          const T* dsp = prob_row(ds, g, b, h, i, 0);
          for (int64_t jb = 0; jb < nb; ++jb) {
            const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb, base = tb.base[jb * g.KW + bb];
              const vec<T> d = load_first(dsp + t * g.Wp + j0, n) * scale, p = load_first(pp + t * g.Wp + j0, n);
              if (base != kIrregular) {  // lanes >= n carry zero weights, so full-width updates are harmless
                for (int64_t c = 0; c < g.D; ++c) {
                  T* dst = dK0 + c * Ws + base;
                  storeu(dst, loadu(dst) + d * loadu(Qrow + c * g.Wp + j0));
                }
                for (int64_t c = 0; c < g.DV; ++c) {
                  T* dst = dV0 + c * Ws + base;
                  storeu(dst, loadu(dst) + p * loadu(dOrow + c * g.Wp + j0));
                }
                continue;
              }
              for (int64_t l = 0; l < n; ++l) {
                const int64_t j = j0 + l;
                if (!tb.c_ok[j * g.KW + bb] || tb.c_idx[j * g.KW + bb] < 0) continue;
                const int64_t cb = tb.c_idx[j * g.KW + bb];
                for (int64_t c = 0; c < g.D; ++c) dK0[c * Ws + cb] += d[l] * Qrow[c * g.Wp + j];
                for (int64_t c = 0; c < g.DV; ++c) dV0[c * Ws + cb] += p[l] * dOrow[c * g.Wp + j];
              }
            }
          }
        }
        for (int64_t j = 0; j < g.W; ++j) {
          T* dkp = dk + g.lgk.at(b, kr, j, h);
          T* dvp = dv + g.lgv.at(b, kr, j, h);
          for (int64_t c = 0; c < g.D; ++c) dkp[c * g.lgk.sc] = dK0[c * Ws + j];
          for (int64_t c = 0; c < g.DV; ++c) dvp[c * g.lgv.sc] = dV0[c * Ws + j];
        }
      }
    }
  }
};

template <typename T>
void backward_keys(const KeysPass<T>& pass) {
  const int64_t tasks = pass.g.B * pass.g.NH * pass.sp.nchunks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) { pass.run(begin, end); });
}

// A contiguous (B, H, W, NH, C) tensor.
Layout contiguous_layout(const Geometry& g, int64_t C) {
  return {g.H * g.W * g.NH * C, g.W * g.NH * C, g.NH * C, C, 1};
}

template <typename T>
Geometry geometry(const at::Tensor& q, const at::Tensor& v, const at::Tensor& r_idx,
                  const at::Tensor& c_idx, bool fixed, int64_t col_dilation) {
  Geometry g;
  g.B = q.size(0);
  g.H = q.size(1);
  g.W = q.size(2);
  g.NH = q.size(3);
  g.D = q.size(4);
  g.DV = v.size(4);
  g.KH = r_idx.size(1);
  g.KW = c_idx.size(1);
  g.K = g.KH * g.KW;
  g.TH = 2 * g.KH - 1;
  g.TW = 2 * g.KW - 1;
  g.lq = g.lk = g.lgq = g.lgk = contiguous_layout(g, g.D);  // the entry points set those of views
  g.lv = g.lgv = g.lo = contiguous_layout(g, g.DV);
  g.PL = fixed ? col_dilation * (g.KW / 2) : 0;
  // Columns rounded up to whole vectors: a full vector load from any regular window column stays in the row
  // (regular blocks read at most PL columns past their block, and the last block's lanes end there).
  g.Wp = g.PL + (g.W + kLanes<T> - 1) / kLanes<T> * kLanes<T> + g.PL;
  return g;
}

template <typename T>
const T* optional_ptr(const at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

// The layout of x (B, H, W, NH, C): its strides, with adjacent channels or adjacent columns (a dimension
// of size 1 may count as either).
Layout layout_of(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 5, "na2d kernel: expected (B, H, W, heads, d) tensors, got ", x.dim(), " dimensions");
  Layout l{x.stride(0), x.stride(1), x.stride(2), x.stride(3), x.stride(4)};
  if (x.size(4) == 1)
    l.sc = 1;
  else if (x.size(2) == 1 && l.sc != 1)
    l.sj = 1;
  TORCH_CHECK(l.sc == 1 || l.sj == 1, "na2d kernel: expected adjacent channels or adjacent columns, got strides ",
              x.strides());
  return l;
}

// rel_zero for a split table (empty for a full one, or none): one flag per (row, head).
template <typename T>
std::vector<char> zero_rows(const at::Tensor& rel, const Geometry& g) {
  std::vector<char> zero;
  if (!g.split_rel || !rel.numel()) return zero;
  const T* r = rel.data_ptr<T>();
  zero.resize(rel.numel() / g.D);
  for (size_t x = 0; x < zero.size(); ++x)
    zero[x] = std::all_of(r + x * g.D, r + (x + 1) * g.D, [](T v) { return v == T(0); });
  return zero;
}

// The geometry of attention on q, k, v with table rel (full, split or empty): the layouts of the q, k
// and v read, and the zero rows of a split table, whose flags `zero` holds (it must outlive g).
template <typename T>
Geometry attention_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel,
                            const at::Tensor& r_idx, const at::Tensor& c_idx, bool fixed, int64_t col_dilation,
                            std::vector<char>& zero) {
  Geometry g = geometry<T>(q, v, r_idx, c_idx, fixed, col_dilation);
  g.split_rel = rel.dim() == 3;
  zero = zero_rows<T>(rel, g);
  g.rel_zero = zero.empty() ? nullptr : zero.data();
  g.lq = layout_of(q), g.lk = layout_of(k), g.lv = layout_of(v);
  return g;
}

}  // namespace

std::vector<at::Tensor> na2d_forward(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor rel,
                                        at::Tensor bias, at::Tensor r_idx, at::Tensor r_ok,
                                        at::Tensor r_off, at::Tensor c_idx, at::Tensor c_ok,
                                        at::Tensor c_off, double scale, bool zeros, bool fixed,
                                        int64_t col_dilation, bool save) {
  at::Tensor out, probs;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_forward", [&] {
    std::vector<char> zero;
    const Geometry g = attention_geometry<scalar_t>(q, k, v, rel, r_idx, c_idx, fixed, col_dilation, zero);
    const Tables tb = make_tables<scalar_t>(r_idx, r_ok, r_off, c_idx, c_ok, c_off, g, fixed, col_dilation);
    out = at::empty({g.B, g.H, g.W, g.NH, g.DV}, v.options());
    probs = at::empty({save ? g.B : 0, g.NH, g.H, g.K, g.Wp}, q.options());
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           optional_ptr<scalar_t>(rel), optional_ptr<scalar_t>(bias), tb,
                           static_cast<scalar_t>(scale), zeros, fixed, g, out.data_ptr<scalar_t>(),
                           save ? probs.data_ptr<scalar_t>() : nullptr);
  });
  return {out, probs};
}

// q, k and v are read where they lie; with packed=true they are the three views of one qkv
// (B, H, W, 3, NH, d) tensor, and the gradient comes back as one such tensor (the first output, the
// next two empty), in place of three contiguous ones.
std::vector<at::Tensor> na2d_backward(at::Tensor dout, at::Tensor q, at::Tensor k, at::Tensor v,
                                         at::Tensor rel, at::Tensor bias, at::Tensor probs,
                                         at::Tensor r_idx, at::Tensor r_ok, at::Tensor r_off,
                                         at::Tensor c_idx, at::Tensor c_ok, at::Tensor c_off,
                                         at::Tensor r_inv, at::Tensor c_inv, double scale, bool want_rel,
                                         bool want_bias, bool fixed, int64_t col_dilation, bool packed) {
  TORCH_CHECK(dout.is_contiguous(), "na2d kernel: the output gradient must be contiguous");
  at::Tensor dq, dk, dv;
  const int64_t step = packed ? convattn_common::packed_step(q, k, v) : 0;
  if (packed) {
    TORCH_CHECK(step > 0, "na2d kernel: packed=true needs the q, k, v views of one (B, H, W, 3, heads, d) tensor");
    dq = convattn_common::empty_packed_like(q, step);  // dqkv laid out as qkv: no copy for the caller
    dk = at::empty({0}, q.options()), dv = at::empty({0}, q.options());
  } else {
    dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
    dv = at::empty(v.sizes(), v.options());
  }
  auto ds = at::empty_like(probs);
  at::Tensor drel, dbias;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward", [&] {
    std::vector<char> zero;
    Geometry g = attention_geometry<scalar_t>(q, k, v, rel, r_idx, c_idx, fixed, col_dilation, zero);
    if (packed) g.lgq = g.lgk = g.lgv = g.lq;
    scalar_t* dq_at = dq.data_ptr<scalar_t>();  // packed: dk and dv are `step` elements on
    scalar_t* dk_at = packed ? dq_at + step : dk.data_ptr<scalar_t>();
    scalar_t* dv_at = packed ? dq_at + 2 * step : dv.data_ptr<scalar_t>();
    const Tables tb = make_tables<scalar_t>(r_idx, r_ok, r_off, c_idx, c_ok, c_off, g, fixed, col_dilation);
    drel = want_rel ? at::zeros(rel.sizes(), q.options()) : at::zeros({0}, q.options());
    dbias = at::zeros({want_bias ? g.NH : 0, g.TH, g.TW}, q.options());
    const auto s = static_cast<scalar_t>(scale);
    const KeysPass<scalar_t> keys{dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), probs.data_ptr<scalar_t>(),
                                  ds.data_ptr<scalar_t>(), tb, r_inv.data_ptr<int64_t>(), r_inv.size(1), s, g, fixed,
                                  col_dilation, dk_at, dv_at, split_rows(g)};
    // A task that holds all rows of its (image, head) has every dS its keys need once its queries are
    // done: the key pass then runs right after, on the same thread, while dS and P are still in cache.
    const bool fused = keys.sp.nchunks == 1;
    backward_queries<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                               v.data_ptr<scalar_t>(), optional_ptr<scalar_t>(rel), probs.data_ptr<scalar_t>(), tb,
                               s, g, fixed, dq_at, ds.data_ptr<scalar_t>(),
                               want_rel ? drel.data_ptr<scalar_t>() : nullptr,
                               want_bias ? dbias.data_ptr<scalar_t>() : nullptr, fused ? &keys : nullptr);
    if (!fused) backward_keys(keys);
  });
  (void)c_inv;  // columns are scattered within a row: the forward tables suffice
  return {dq, dk, dv, drel, dbias};
}

// Weighted window sums with given weights (no softmax): out_p = sum_t w[p, t] v_{p + offset_t}, the
// per-pixel depth-wise convolution. w is laid out like the probabilities: (B, heads, H, K, Wp).
template <typename T>
void apply_forward_impl(const T* w, const T* v, const Tables& tb, const Geometry& g, T* out) {
  constexpr int64_t L = kLanes<T>;
  const Split sp = split_rows(g);
  const int64_t nb = (g.W + L - 1) / L;
  at::parallel_for(0, g.B * g.NH * sp.nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Kslab, Vslab;
    std::vector<vec<T>> P(g.K), O(g.DV);
    std::vector<const T*> ptr(g.K);
    for (int64_t task = begin; task < end; ++task) {
      const auto [b, h, i0, i1, kr0] = load_key_slabs<T>(nullptr, v, tb, g, sp, task, Kslab, Vslab);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t jb = 0; jb < nb; ++jb) {
          const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
          for (int64_t t = 0; t < g.K; ++t) P[t] = load_first(prob_row(w, g, b, h, i, t) + j0, n);
          std::fill(O.begin(), O.end(), vec<T>{});
          block_gather(P.data(), Vslab.data() + g.PL, kr0, g.DV, tb, g, i, jb, n, ptr.data(), O.data());
          store_block(O.data(), g.DV, g.lo, g, b, h, i, j0, n, out);
        }
    }
  });
}

// Gradients of the weighted sums: dw[p, t] = dout_p . v_{p + offset_t} (per query), and
// dv = sum_t w dout gathered per key row (fixed windows only: zero-padded, as the convolution).
template <typename T>
void apply_backward_impl(const T* dout, const T* w, const T* v, const Tables& tb, const int64_t* r_inv, int64_t mr,
                         const Geometry& g, int64_t col_dilation, T* dw, T* dv) {
  constexpr int64_t L = kLanes<T>;
  const Split sp = split_rows(g);
  const int64_t nb = (g.W + L - 1) / L;
  at::parallel_for(0, g.B * g.NH * sp.nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> Kslab, Vslab, dOt(g.DV * g.Wp, T(0));
    std::vector<vec<T>> dP(g.K);
    std::vector<const T*> ptr(g.K);
    for (int64_t task = begin; task < end; ++task) {
      const auto [b, h, i0, i1, kr0] = load_key_slabs<T>(nullptr, v, tb, g, sp, task, Kslab, Vslab);
      for (int64_t i = i0; i < i1; ++i) {
        to_slab(dout, g.DV, g.lo, g, b, h, i, i + 1, dOt.data());
        for (int64_t jb = 0; jb < nb; ++jb) {
          const int64_t j0 = jb * L, n = std::min(L, g.W - j0);
          std::fill(dP.begin(), dP.end(), vec<T>{});
          slot_pointers(Vslab.data() + g.PL, kr0, g.DV, tb, g, i, jb, ptr.data());
          dot_slots(dOt.data() + g.PL + j0, ptr.data(), g.K, g.DV, g.Wp, dP.data());
          for (int64_t t = 0; t < g.K; ++t) store_first(prob_row(dw, g, b, h, i, t) + j0, dP[t], n);
        }
        zero_pads(dw, g, b, h, i);
      }
    }
  });
  at::parallel_for(0, g.B * g.NH * sp.nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> dOslab;
    std::vector<vec<T>> tmp(g.DV);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (g.NH * sp.nchunks), h = (task / sp.nchunks) % g.NH;
      const int64_t k0 = (task % sp.nchunks) * sp.chunk, k1 = std::min(g.H, k0 + sp.chunk);
      const auto [qr0, qr1] = query_rows(r_inv, mr, g.H, k0, k1);
      prepare_slab(dOslab, std::max<int64_t>(qr1 - qr0, 0), g.DV, g);
      if (qr1 > qr0) to_slab(dout, g.DV, g.lo, g, b, h, qr0, qr1, dOslab.data());
      for (int64_t kr = k0; kr < k1; ++kr) {
        int64_t npairs = 0;
        while (npairs < mr && r_inv[(kr * mr + npairs) * 2] >= 0) ++npairs;
        for (int64_t kb = 0; kb < nb; ++kb) {
          const int64_t kc0 = kb * L, n = std::min(L, g.W - kc0);
          gather_fixed(w, dOslab.data() + g.PL, g.DV * g.Wp, g.DV, r_inv + kr * mr * 2, npairs, qr0, g, b, h, kc0,
                       col_dilation, T(1), tmp.data());
          store_block(tmp.data(), g.DV, g.lgv, g, b, h, kr, kc0, n, dv);
        }
      }
    }
  });
}

at::Tensor na2d_apply_forward(at::Tensor w, at::Tensor v, at::Tensor r_idx, at::Tensor r_ok,
                                 at::Tensor r_off, at::Tensor c_idx, at::Tensor c_ok, at::Tensor c_off,
                                 int64_t col_dilation) {
  TORCH_CHECK(v.is_contiguous() && w.is_contiguous(), "na2d kernel: the weighted sums need contiguous v and w");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_apply_forward", [&] {
    const Geometry g = geometry<scalar_t>(v, v, r_idx, c_idx, true, col_dilation);
    const Tables tb = make_tables<scalar_t>(r_idx, r_ok, r_off, c_idx, c_ok, c_off, g, true, col_dilation);
    TORCH_CHECK(w.size(4) == g.Wp && w.size(3) == g.K, "weights must be (B, heads, H, K, Wp)");
    out = at::empty_like(v);
    apply_forward_impl<scalar_t>(w.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), tb, g, out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> na2d_apply_backward(at::Tensor dout, at::Tensor w, at::Tensor v,
                                               at::Tensor r_idx, at::Tensor r_ok, at::Tensor r_off,
                                               at::Tensor c_idx, at::Tensor c_ok, at::Tensor c_off,
                                               at::Tensor r_inv, int64_t col_dilation) {
  TORCH_CHECK(v.is_contiguous() && w.is_contiguous() && dout.is_contiguous(),
              "na2d kernel: the weighted sums need contiguous v, w and dout");
  auto dw = at::empty_like(w), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_apply_backward", [&] {
    const Geometry g = geometry<scalar_t>(v, v, r_idx, c_idx, true, col_dilation);
    const Tables tb = make_tables<scalar_t>(r_idx, r_ok, r_off, c_idx, c_ok, c_off, g, true, col_dilation);
    apply_backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), tb,
                                  r_inv.data_ptr<int64_t>(), r_inv.size(1), g, col_dilation,
                                  dw.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>());
  });
  return {dw, dv};
}

// Bytes in one of the kernels' vectors: the padded rows callers lay out are whole vectors.
int64_t vector_bytes() { return convattn_simd::kVecBytes; }

}  // namespace convattn_na2d

// torch.ops.convattn.na2d_*: one translation unit per kernel file, built in parallel.
TORCH_LIBRARY_FRAGMENT(convattn, m) {
  m.def("na2d_forward", &convattn_na2d::na2d_forward);
  m.def("na2d_backward", &convattn_na2d::na2d_backward);
  m.def("na2d_apply_forward", &convattn_na2d::na2d_apply_forward);
  m.def("na2d_apply_backward", &convattn_na2d::na2d_apply_backward);
  m.def("na2d_vector_bytes", &convattn_na2d::vector_bytes);
}
