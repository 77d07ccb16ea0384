// Separable position-only attention with the heads summed, channels-last (CPU): the layers of Cordonnier
// et al. 2020 whose scores split into a row part plus a column part, with the output projection first.
//
// z (B, H, W, h, C) (each head's pixels already projected), rows (h, H, H), cols (h, W, W):
//
//     y[b,i,j,:] = sum_h sum_k rows[h,i,k] sum_l cols[h,j,l] z[b,k,l,h,:]            y (B, H, W, C)
//
// One image is one task. The column mix t[k,j,h,:] = sum_l cols[h,j,l] z[k,l,h,:] goes into the task's
// buffer, then the row mix adds every head into y: (H + W) h C multiply-adds per pixel, where the dense
// (H W) x (H W h) product costs H W h C. Backward, with s[h,k,j,:] = sum_i rows[h,i,k] dy[i,j,:]:
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

// out[m, :N] (+)= sum_k a[m*am + k*ak] * b[k*ldb + :N] for m < M, out rows ldo apart. a's two strides let
// one routine take a table or its transpose.
template <typename T>
void small_gemm(int64_t M, int64_t K, int64_t N, const T* a, int64_t am, int64_t ak, const T* b, int64_t ldb,
                T* out, int64_t ldo, bool accumulate) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t n0 = 0; n0 < N; n0 += kBlock * L) {
    const int64_t nn = std::min(kBlock * L, N - n0), full = nn / L, rem = nn % L;
    for (int64_t m = 0; m < M; ++m) {
      vec<T> acc[kBlock] = {};
      for (int64_t k = 0; k < K; ++k) {
        const vec<T> w = splat(a[m * am + k * ak]);
        const T* row = b + k * ldb + n0;
#pragma GCC unroll 4
        for (int64_t v = 0; v < kBlock; ++v) {
          if (v < full) acc[v] += w * loadu(row + v * L);
        }
        if (rem) acc[full] += w * load_first(row + full * L, rem);
      }
      T* dst = out + m * ldo + n0;
#pragma GCC unroll 4
      for (int64_t v = 0; v < kBlock; ++v) {
        if (v < full) storeu(dst + v * L, accumulate ? acc[v] + loadu(dst + v * L) : acc[v]);
      }
      if (rem) {
        store_first(dst + full * L, accumulate ? acc[full] + load_first(dst + full * L, rem) : acc[full], rem);
      }
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
    for (int64_t o = 0; o < m; ++o) out[o0 + o] += acc[o];
  }
}

struct Shape {
  int64_t B, H, W, h, C;
  int64_t image() const { return H * W * h * C; }  // z (or t) elements per image
};

Shape shape_of(const at::Tensor& z) { return {z.size(0), z.size(1), z.size(2), z.size(3), z.size(4)}; }

// t[k,j,hh,:] = sum_l cols[hh,j,l] z[k,l,hh,:] for one image.
template <typename T>
void column_mix(const Shape& s, const T* z, const T* cols, T* t) {
  const int64_t rowlen = s.W * s.h * s.C;
  for (int64_t k = 0; k < s.H; ++k)
    for (int64_t hh = 0; hh < s.h; ++hh)
      small_gemm(s.W, s.W, s.C, cols + hh * s.W * s.W, s.W, int64_t{1}, z + k * rowlen + hh * s.C, s.h * s.C,
                 t + k * rowlen + hh * s.C, s.h * s.C, false);
}

template <typename T>
void forward_impl(const Shape& s, const T* z, const T* rows, const T* cols, T* y) {
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> t(s.image());
    for (int64_t b = begin; b < end; ++b) {
      const T* zb = z + b * s.image();
      T* yb = y + b * s.H * s.W * s.C;
      column_mix(s, zb, cols, t.data());
      for (int64_t j = 0; j < s.W; ++j)  // y[:, j, :] = sum_hh rows[hh] @ t[:, j, hh, :]
        for (int64_t hh = 0; hh < s.h; ++hh)
          small_gemm(s.H, s.H, s.C, rows + hh * s.H * s.H, s.H, int64_t{1}, t.data() + (j * s.h + hh) * s.C,
                     s.W * s.h * s.C, yb + j * s.C, s.W * s.C, hh > 0);
    }
  });
}

template <typename T>
void backward_impl(const Shape& s, const T* dy, const T* z, const T* rows, const T* cols, T* dz, T* drows,
                   T* dcols) {
  const int64_t HH = s.h * s.H * s.H, WW = s.h * s.W * s.W, rowlen = s.W * s.h * s.C;
  // The table gradients of each chunk of images, lane by lane, kept by the chunk's first image and summed
  // in image order below: the same bits in every run with the same number of threads.
  std::vector<std::vector<vec<T>>> part(s.B);
  at::parallel_for(0, s.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> t(s.image()), sb(s.image());  // sb[hh][k][j][:]
    std::vector<vec<T>>& acc = part[begin];
    acc.assign(HH + WW, vec<T>{});
    vec<T>* pr = acc.data();
    vec<T>* pc = pr + HH;
    for (int64_t b = begin; b < end; ++b) {
      const T* zb = z + b * s.image();
      const T* dyb = dy + b * s.H * s.W * s.C;
      T* dzb = dz + b * s.image();
      for (int64_t hh = 0; hh < s.h; ++hh)  // s[hh] = rows[hh]^T @ dy (H x W C)
        small_gemm(s.H, s.H, s.W * s.C, rows + hh * s.H * s.H, int64_t{1}, s.H, dyb, s.W * s.C,
                   sb.data() + hh * s.H * s.W * s.C, s.W * s.C, false);
      for (int64_t hh = 0; hh < s.h; ++hh) {
        const T* sh = sb.data() + hh * s.H * s.W * s.C;
        for (int64_t k = 0; k < s.H; ++k)  // dz[k, :, hh, :] = cols[hh]^T @ s[hh, k]
          small_gemm(s.W, s.W, s.C, cols + hh * s.W * s.W, int64_t{1}, s.W, sh + k * s.W * s.C, s.C,
                     dzb + k * rowlen + hh * s.C, s.h * s.C, false);
        for (int64_t j = 0; j < s.W; ++j)  // dcols[hh, j, l] = sum_{k,c} s[hh,k,j,c] z[k,l,hh,c]
          dots(s.W, s.H, s.C, sh + j * s.C, s.W * s.C, zb + hh * s.C, s.h * s.C, rowlen, pc + (hh * s.W + j) * s.W);
      }
      column_mix(s, zb, cols, t.data());
      for (int64_t hh = 0; hh < s.h; ++hh)  // drows[hh, i, k] = sum_{j,c} dy[i,j,c] t[k,j,hh,c]
        for (int64_t i = 0; i < s.H; ++i)
          dots(s.H, s.W, s.C, dyb + i * s.W * s.C, s.C, t.data() + hh * s.C, rowlen, s.h * s.C,
               pr + (hh * s.H + i) * s.H);
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

// torch.ops.convattn.posmix_*: one translation unit per kernel file, built in parallel.
TORCH_LIBRARY_FRAGMENT(convattn, m) {
  m.def("posmix_forward", &convattn_posmix::posmix_forward);
  m.def("posmix_backward", &convattn_posmix::posmix_backward);
}
