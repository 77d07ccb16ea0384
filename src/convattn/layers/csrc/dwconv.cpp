// Depth-wise convolution with a kernel per image (DWNet's homogeneous dynamic conv), channels-last (CPU).
//
// x (B, H, W, C), kernels (B, C, KH, KW), zero 'same' padding with dilation; out (B, H, W, C).
// Each (image, block of L channels) is one task: its pixels are copied into a zero-padded slab of
// (H + 2 r_h) x (Wq + 2 r_w) vectors of L channels, so the taps need no bounds checks and SIMD lanes run
// along channels. The input gradient is the same correlation of the output gradient with the flipped
// kernel; the kernel gradient sums dout * x over the pixels of one image, so tasks never share an output.
#include "common.h"

#include <algorithm>
#include <vector>

#include "simd.h"

namespace convattn_dwconv {

namespace {
using namespace convattn_simd;

constexpr int64_t kCols = 8;  // output columns per register block

struct Geometry {
  int64_t B, H, W, C, KH, KW, dil, rh, rw;
  int64_t Wq, SH, SW;  // columns rounded up to kCols; slab rows and columns (with the zero border)
  int64_t nblocks;     // channel blocks of L
};

template <typename T>
Geometry geometry(const at::Tensor& x, const at::Tensor& kernels, int64_t dil) {
  constexpr int64_t L = kLanes<T>;
  Geometry g;
  g.B = x.size(0), g.H = x.size(1), g.W = x.size(2), g.C = x.size(3);
  g.KH = kernels.size(2), g.KW = kernels.size(3), g.dil = dil;
  g.rh = dil * (g.KH / 2), g.rw = dil * (g.KW / 2);
  g.Wq = (g.W + kCols - 1) / kCols * kCols;
  g.SH = g.H + 2 * g.rh, g.SW = g.Wq + 2 * g.rw;
  g.nblocks = (g.C + L - 1) / L;
  return g;
}

// Channels [c0, c0 + L) of image b of x (B, H, W, C) into the slab (SH, SW, L), zero outside the image.
template <typename T>
void to_slab(const T* x, const Geometry& g, int64_t b, int64_t c0, std::vector<vec<T>>& slab) {
  constexpr int64_t L = kLanes<T>;
  slab.assign(g.SH * g.SW, vec<T>{});
  const int64_t n = std::min(L, g.C - c0);
  for (int64_t y = 0; y < g.H; ++y)
    for (int64_t c = 0; c < g.W; ++c) {
      const T* src = x + ((b * g.H + y) * g.W + c) * g.C + c0;
      vec<T>& dst = slab[(y + g.rh) * g.SW + c + g.rw];
      if (n == L) {
        dst = loadu(src);
      } else {
        for (int64_t l = 0; l < n; ++l) dst[l] = src[l];
      }
    }
}

// out[y][c] = sum_taps w[tap] * slab[y + a*dil][c + bb*dil] for every output pixel, written to
// channels [c0, c0 + n) of image b of y (B, H, W, C). `flip` reverses the taps (the input gradient).
template <typename T>
void correlate(const std::vector<vec<T>>& slab, const vec<T>* w, bool flip, const Geometry& g, int64_t b, int64_t c0,
               T* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t n = std::min(L, g.C - c0), K = g.KH * g.KW;
  for (int64_t y = 0; y < g.H; ++y)
    for (int64_t x0 = 0; x0 < g.Wq; x0 += kCols) {
      vec<T> acc[kCols] = {};
      for (int64_t a = 0; a < g.KH; ++a) {
        const vec<T>* row = slab.data() + (y + a * g.dil) * g.SW + x0;
        for (int64_t bb = 0; bb < g.KW; ++bb) {
          const vec<T> wt = w[flip ? K - 1 - (a * g.KW + bb) : a * g.KW + bb];
          const vec<T>* in = row + bb * g.dil;
#pragma GCC unroll 8
          for (int64_t u = 0; u < kCols; ++u) acc[u] += wt * in[u];
        }
      }
      for (int64_t u = 0; u < kCols && x0 + u < g.W; ++u) {
        T* dst = out + ((b * g.H + y) * g.W + x0 + u) * g.C + c0;
        if (n == L) {
          storeu(dst, acc[u]);
        } else {
          for (int64_t l = 0; l < n; ++l) dst[l] = acc[u][l];
        }
      }
    }
}

// The K tap vectors of channels [c0, c0 + L) of image b from kernels (B, C, KH, KW); zero past C.
template <typename T>
void tap_vectors(const T* kernels, const Geometry& g, int64_t b, int64_t c0, std::vector<vec<T>>& w) {
  const int64_t K = g.KH * g.KW, n = std::min(kLanes<T>, g.C - c0);
  w.assign(K, vec<T>{});
  for (int64_t l = 0; l < n; ++l)
    for (int64_t t = 0; t < K; ++t) w[t][l] = kernels[(b * g.C + c0 + l) * K + t];
}

template <typename T>
void forward_impl(const T* x, const T* kernels, const Geometry& g, T* out) {
  at::parallel_for(0, g.B * g.nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vec<T>> slab, w;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.nblocks, c0 = (task % g.nblocks) * kLanes<T>;
      tap_vectors(kernels, g, b, c0, w);
      to_slab(x, g, b, c0, slab);
      correlate(slab, w.data(), false, g, b, c0, out);
    }
  });
}

template <typename T>
void backward_impl(const T* dout, const T* x, const T* kernels, const Geometry& g, T* dx, T* dk) {
  constexpr int64_t L = kLanes<T>;
  at::parallel_for(0, g.B * g.nblocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<vec<T>> slab, dslab, w, acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / g.nblocks, c0 = (task % g.nblocks) * L;
      const int64_t n = std::min(L, g.C - c0), K = g.KH * g.KW;
      tap_vectors(kernels, g, b, c0, w);
      to_slab(dout, g, b, c0, dslab);
      correlate(dslab, w.data(), true, g, b, c0, dx);  // dx = dout correlated with the flipped kernel
      to_slab(x, g, b, c0, slab);
      acc.assign(K, vec<T>{});
      for (int64_t a = 0; a < g.KH; ++a) {  // dk[a][bb] = sum_pixels dout[p] * x[p + offset]
        vec<T> part[32];
        for (int64_t bb0 = 0; bb0 < g.KW; bb0 += 32) {
          const int64_t nb = std::min<int64_t>(32, g.KW - bb0);
          std::fill(part, part + nb, vec<T>{});
          for (int64_t y = 0; y < g.H; ++y) {
            const vec<T>* drow = dslab.data() + (y + g.rh) * g.SW + g.rw;
            const vec<T>* row = slab.data() + (y + a * g.dil) * g.SW + bb0 * g.dil;
            for (int64_t c = 0; c < g.W; ++c) {
              const vec<T> d = drow[c];
              for (int64_t bb = 0; bb < nb; ++bb) part[bb] += d * row[c + bb * g.dil];
            }
          }
          for (int64_t bb = 0; bb < nb; ++bb) acc[a * g.KW + bb0 + bb] = part[bb];
        }
      }
      for (int64_t l = 0; l < n; ++l)
        for (int64_t t = 0; t < K; ++t) dk[(b * g.C + c0 + l) * K + t] = acc[t][l];
    }
  });
}

}  // namespace

at::Tensor image_dwconv_forward(at::Tensor x, at::Tensor kernels, int64_t dilation) {
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_dwconv_forward", [&] {
    const Geometry g = geometry<scalar_t>(x, kernels, dilation);
    out = at::empty_like(x);
    forward_impl<scalar_t>(x.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(), g, out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<at::Tensor> image_dwconv_backward(at::Tensor dout, at::Tensor x, at::Tensor kernels,
                                                 int64_t dilation) {
  auto dx = at::empty_like(x), dk = at::empty_like(kernels);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "image_dwconv_backward", [&] {
    const Geometry g = geometry<scalar_t>(x, kernels, dilation);
    backward_impl<scalar_t>(dout.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), kernels.data_ptr<scalar_t>(), g,
                            dx.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>());
  });
  return {dx, dk};
}

}  // namespace convattn_dwconv

// torch.ops.convattn.dwconv_*: compiled within small_kernels.cpp.
TORCH_LIBRARY_FRAGMENT(convattn, m) {
  m.def("dwconv_forward", &convattn_dwconv::image_dwconv_forward);
  m.def("dwconv_backward", &convattn_dwconv::image_dwconv_backward);
}
