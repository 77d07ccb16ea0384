// Separable position-only attention with the heads summed, channels-last (CPU): the layers of Cordonnier
// et al. 2020 whose scores split into a row part plus a column part, with the output projection first.
//
// z (B, H, W, h, C) (each head's pixels already projected), rows (h, H, H), cols (h, W, W):
//
//     y[b,i,j,:] = sum_h sum_k rows[h,i,k] sum_l cols[h,j,l] z[b,k,l,h,:]            y (B, H, W, C)
//
// One image is one task. The column mix t[k,j,h,:] = sum_l cols[h,j,l] z[k,l,h,:] goes into the task's
// buffer, then the row mix adds every head into y, one column of y at a time: (H + W) h C multiply-adds
// per pixel, where the dense (H W) x (H W h) product costs H W h C. The backward runs head by head in
// buffers of one head's map (the column mix recomputed), with s[h,k,j,:] = sum_i rows[h,i,k] dy[i,j,:]:
//
//     dz[k,l,h,:] = sum_j cols[h,j,l] s[h,k,j,:]
//     drows[h,i,k] = sum_{j,c} dy[i,j,c] t[k,j,h,c]        dcols[h,j,l] = sum_{k,c} s[h,k,j,c] z[k,l,h,c]
//
// The table gradients are summed per chunk of images, lane by lane, then over the chunks in order: the
// same bits in every run with the same number of threads. Every product is a small matrix product, its
// columns in SIMD lanes.
#include "common.h"

#include <algorithm>
#include <vector>

#include "simd.h"

namespace convattn_posmix {

namespace {
using namespace convattn_simd;

constexpr int64_t kBlock = 4;  // output vectors per register block

// Output rows per register block of NT vectors: the largest power of two, at most 8, whose MB NT
// accumulators, NT b vectors and one broadcast fit in the registers. One row keeps only NT multiply-add
// chains in flight, too few for a core with two vector FMA units, and each b vector loaded serves MB
// rows.
constexpr int rows_at_once(int NT) {
  int mb = 8;
  while (mb > 1 && mb * NT + NT + 1 > kVecRegisters) mb /= 2;
  return mb;
}

// out[m0.., n0..] (+)= a @ b for MB rows and NV full vectors (+ one vector of `rem` lanes when TAIL), every
// index a constant so that the accumulators stay in registers.
template <typename T, int MB, int NV, bool TAIL>
inline void gemm_block(int64_t K, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb, T* out, int64_t ldo,
                       bool accumulate, int64_t rem) {
  constexpr int64_t L = kLanes<T>;
  constexpr int NT = NV + (TAIL ? 1 : 0);
  vec<T> acc[MB][NT] = {};
  for (int64_t k = 0; k < K; ++k) {
    const T* row = b + k * ldb;
    vec<T> bv[NT];
    for (int v = 0; v < NV; ++v) bv[v] = loadu(row + v * L);
    if constexpr (TAIL) bv[NV] = load_first(row + NV * L, rem);
    for (int r = 0; r < MB; ++r) {
      const vec<T> w = splat(a[r * am + k * ak]);
      for (int v = 0; v < NT; ++v) acc[r][v] += w * bv[v];
    }
  }
  for (int r = 0; r < MB; ++r) {
    T* dst = out + r * ldo;
    for (int v = 0; v < NV; ++v) storeu(dst + v * L, accumulate ? acc[r][v] + loadu(dst + v * L) : acc[r][v]);
    if constexpr (TAIL) {
      const vec<T> t = accumulate ? acc[r][NV] + load_first(dst + NV * L, rem) : acc[r][NV];
      store_first(dst + NV * L, t, rem);
    }
  }
}

// All M rows of one block of NV (+ TAIL) vectors: MB rows at a time, then halves of MB for the rest.
template <typename T, int NV, bool TAIL, int MB = rows_at_once(NV + (TAIL ? 1 : 0))>
void gemm_rows(int64_t M, int64_t K, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb, T* out,
               int64_t ldo, bool accumulate, int64_t rem) {
  int64_t m = 0;
  for (; m + MB <= M; m += MB)
    gemm_block<T, MB, NV, TAIL>(K, a + m * am, am, ak, b, ldb, out + m * ldo, ldo, accumulate, rem);
  if constexpr (MB > 1) {
    if (m < M)
      gemm_rows<T, NV, TAIL, MB / 2>(M - m, K, a + m * am, am, ak, b, ldb, out + m * ldo, ldo, accumulate, rem);
  }
}

// out[m, :N] (+)= sum_k a[m*am + k*ak] * b[k*ldb + :N] for m < M, out rows ldo apart. a's two strides let
// one routine take a table or its transpose. Each output sums over k in order, whatever the blocking.
template <typename T>
void small_gemm(int64_t M, int64_t K, int64_t N, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb,
                T* out, int64_t ldo, bool accumulate) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t n0 = 0; n0 < N; n0 += kBlock * L) {
    const int64_t nn = std::min(kBlock * L, N - n0), rem = nn % L;
    const T* bb = b + n0;
    T* o = out + n0;
    switch (nn / L * 2 + (rem ? 1 : 0)) {  // full vectors, and whether a partial one follows
      case 8: gemm_rows<T, 4, false>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 7: gemm_rows<T, 3, true>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 6: gemm_rows<T, 3, false>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 5: gemm_rows<T, 2, true>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 4: gemm_rows<T, 2, false>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 3: gemm_rows<T, 1, true>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      case 2: gemm_rows<T, 1, false>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
      default: gemm_rows<T, 0, true>(M, K, a, am, ak, bb, ldb, o, ldo, accumulate, rem); break;
    }
  }
}

constexpr int64_t kDots = 8;  // dot products in flight: independent accumulators hide the FMA latency

// out[o] += sum_{r < R} sum_{c < C} x[r*xs + c] * y[o*yo + r*ys + c] for o < n, lane by lane (the lanes
// are summed once, at the end of the backward): one x against n y's.
template <typename T>
void dots(int64_t n, int64_t R, int64_t C, const T* x, int64_t xs, const T* y, int64_t yo, int64_t ys,
          vec<T>* out) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t o0 = 0; o0 < n; o0 += kDots) {
    const int64_t m = std::min(kDots, n - o0);
    vec<T> acc[kDots] = {};
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; c += L) {
        const int64_t w = std::min(L, C - c);
        const vec<T> xv = w == L ? loadu(x + r * xs + c) : load_first(x + r * xs + c, w);
        const T* yr = y + o0 * yo + r * ys + c;
#pragma GCC unroll 8
        for (int64_t o = 0; o < kDots; ++o) {
          if (o < m) acc[o] += xv * (w == L ? loadu(yr + o * yo) : load_first(yr + o * yo, w));
        }
      }
#pragma GCC unroll 8
    for (int64_t o = 0; o < kDots; ++o) {
      if (o < m) out[o0 + o] += acc[o];
    }
  }
}

struct Shape {
  int64_t B, H, W, h, C;
  int64_t image() const { return H * W * h * C; }  // z (or t) elements per image
};

Shape shape_of(const at::Tensor& z) { return {z.size(0), z.size(1), z.size(2), z.size(3), z.size(4)}; }

// t[k*tk + j*tj + :C] = sum_l cols[hh,j,l] z[k,l,hh,:]: head hh's column mix of one image.
template <typename T>
void column_mix(const Shape& s, const T* z, const T* cols, int64_t hh, T* t, int64_t tk, int64_t tj) {
  const int64_t rowlen = s.W * s.h * s.C;
  for (int64_t k = 0; k < s.H; ++k)
    small_gemm(s.W, s.W, s.C, cols + hh * s.W * s.W, s.W, int64_t{1}, z + k * rowlen + hh * s.C, s.h * s.C,
               t + k * tk, tj, false);
}

template <typename T>
void forward_impl(const Shape& s, const T* z, const T* rows, const T* cols, T* y) {
  const int64_t rowlen = s.W * s.h * s.C;
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;  // softmax tables are full of subnormals
    std::vector<T> t(s.image());  // t[k][j][hh][:], every head's column mix
    for (int64_t b = begin; b < end; ++b) {
      const T* zb = z + b * s.image();
      T* yb = y + b * s.H * s.W * s.C;
      for (int64_t hh = 0; hh < s.h; ++hh) column_mix(s, zb, cols, hh, t.data() + hh * s.C, rowlen, s.h * s.C);
      for (int64_t j = 0; j < s.W; ++j)  // y[:, j, :] = sum_hh rows[hh] @ t[:, j, hh, :]: y's column stays in cache
        for (int64_t hh = 0; hh < s.h; ++hh)
          small_gemm(s.H, s.H, s.C, rows + hh * s.H * s.H, s.H, int64_t{1}, t.data() + (j * s.h + hh) * s.C, rowlen,
                     yb + j * s.C, s.W * s.C, hh > 0);
    }
  });
}

template <typename T>
void backward_impl(const Shape& s, const T* dy, const T* z, const T* rows, const T* cols, T* dz, T* drows,
                   T* dcols) {
  const int64_t HH = s.h * s.H * s.H, WW = s.h * s.W * s.W, rowlen = s.W * s.h * s.C, plane = s.H * s.W * s.C;
  // The table gradients of each chunk of images, lane by lane, kept by the chunk's first image and summed
  // in image order below: the same bits in every run with the same number of threads.
  std::vector<std::vector<vec<T>>> part(s.B);
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    std::vector<T> th(plane), sh(plane);  // one head's column mix of z and row mix of dy: cache-sized
    std::vector<vec<T>>& acc = part[begin];
    acc.assign(HH + WW, vec<T>{});
    vec<T>* pr = acc.data();
    vec<T>* pc = pr + HH;
    for (int64_t b = begin; b < end; ++b) {
      const T* zb = z + b * s.image();
      const T* dyb = dy + b * plane;
      T* dzb = dz + b * s.image();
      for (int64_t hh = 0; hh < s.h; ++hh) {
        // sh = rows[hh]^T @ dy (H x W C): sh[k][j][:] = sum_i rows[hh,i,k] dy[i,j,:]
        small_gemm(s.H, s.H, s.W * s.C, rows + hh * s.H * s.H, int64_t{1}, s.H, dyb, s.W * s.C, sh.data(), s.W * s.C,
                   false);
        for (int64_t k = 0; k < s.H; ++k)  // dz[k, :, hh, :] = cols[hh]^T @ sh[k]
          small_gemm(s.W, s.W, s.C, cols + hh * s.W * s.W, int64_t{1}, s.W, sh.data() + k * s.W * s.C, s.C,
                     dzb + k * rowlen + hh * s.C, s.h * s.C, false);
        for (int64_t j = 0; j < s.W; ++j)  // dcols[hh, j, l] = sum_{k,c} sh[k,j,c] z[k,l,hh,c]
          dots(s.W, s.H, s.C, sh.data() + j * s.C, s.W * s.C, zb + hh * s.C, s.h * s.C, rowlen,
               pc + (hh * s.W + j) * s.W);
        column_mix(s, zb, cols, hh, th.data(), s.W * s.C, s.C);
        for (int64_t i = 0; i < s.H; ++i)  // drows[hh, i, k] = sum_{j,c} dy[i,j,c] th[k,j,c]
          dots(s.H, s.W, s.C, dyb + i * s.W * s.C, s.C, th.data(), s.W * s.C, s.C, pr + (hh * s.H + i) * s.H);
      }
    }
  });
  std::vector<vec<T>> total(HH + WW, vec<T>{});
  for (const auto& chunk : part)
    for (size_t e = 0; e < chunk.size(); ++e) total[e] += chunk[e];
  for (int64_t e = 0; e < HH + WW; ++e) {
    T sum = 0;
    for (int64_t l = 0; l < kLanes<T>; ++l) sum += total[e][l];
    (e < HH ? drows[e] : dcols[e - HH]) = sum;
  }
}

}  // namespace

// z (B, H, W, h, C), rows (h, H, H), cols (h, W, W), all contiguous and of one dtype -> y (B, H, W, C).
at::Tensor posmix_forward(at::Tensor z, at::Tensor rows, at::Tensor cols) {
  const Shape s = shape_of(z);
  at::Tensor y = at::empty({s.B, s.H, s.W, s.C}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "posmix_forward", [&] {
    forward_impl<scalar_t>(s, z.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), cols.data_ptr<scalar_t>(),
                           y.data_ptr<scalar_t>());
  });
  return y;
}

// dy (B, H, W, C) and the forward's inputs -> [dz, drows, dcols].
std::vector<at::Tensor> posmix_backward(at::Tensor dy, at::Tensor z, at::Tensor rows, at::Tensor cols) {
  const Shape s = shape_of(z);
  auto dz = at::empty_like(z), drows = at::empty_like(rows), dcols = at::empty_like(cols);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "posmix_backward", [&] {
    backward_impl<scalar_t>(s, dy.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(),
                            cols.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(), drows.data_ptr<scalar_t>(),
                            dcols.data_ptr<scalar_t>());
  });
  return {dz, drows, dcols};
}

}  // namespace convattn_posmix

// torch.ops.convattn.posmix_*: compiled within small_kernels.cpp.
TORCH_LIBRARY_FRAGMENT(convattn, m) {
  m.def("posmix_forward", &convattn_posmix::posmix_forward);
  m.def("posmix_backward", &convattn_posmix::posmix_backward);
}
