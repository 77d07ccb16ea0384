// Dropout with a counter-based mask (CPU): element i of a call keeps its value where
//
//     draw(i) = mix(mix(lo32(i) ^ s0) ^ hi32(i) ^ s1) >= threshold                     y = x * (scale or 0)
//
// mix is a 32-bit integer hash (two xor-shift-multiply rounds, the "lowbias32" constants) and (s0, s1)
// the call's 64-bit seed. The mask is a function of the seed and the element's index alone: nothing is
// drawn element by element from a sequential generator, nothing is saved for the backward (which applies
// the same mask to the output gradient), and every thread count gives the same bits. The PyTorch path in
// convattn.layers.dropout computes the same draws with int64 tensor arithmetic.
#include "common.h"

#include <algorithm>

namespace convattn_dropout {

namespace {

inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

constexpr int64_t kGrain = 1 << 14;  // elements per task: below this a thread costs more than it saves

// Elements [begin, end) of the call, x and y pointing at index `offset`. Its arguments are values (not a
// lambda's captures, which a store to y could alias and so keep the loop scalar).
template <typename T>
void apply_range(const T* __restrict x, T* __restrict y, int64_t begin, int64_t end, int64_t offset, uint32_t s0,
                 uint32_t s1, uint32_t threshold, T scale) {
  for (int64_t i = begin; i < end;) {  // runs of indices with one high word, so the loop is 32-bit
    const int64_t stop = std::min(end, ((i >> 32) + 1) << 32);
    const uint32_t key = static_cast<uint32_t>(i >> 32) ^ s1, lo = static_cast<uint32_t>(i);
    const T* xi = x + (i - offset);
    T* yi = y + (i - offset);
    const int64_t m = stop - i;
    for (int64_t j = 0; j < m; ++j) {
      const uint32_t draw = mix(mix((lo + static_cast<uint32_t>(j)) ^ s0) ^ key);
      yi[j] = xi[j] * (draw >= threshold ? scale : T(0));
    }
    i = stop;
  }
}

template <typename T>
void apply_impl(const T* x, T* y, int64_t n, int64_t offset, uint32_t s0, uint32_t s1, uint32_t threshold,
                T scale) {
  at::parallel_for(offset, offset + n, kGrain, [=](int64_t begin, int64_t end) {
    apply_range(x, y, begin, end, offset, s0, s1, threshold, scale);
  });
}

}  // namespace

// x contiguous (float or double), seed in [0, 2^63), threshold in [0, 2^32), scale -> x * mask * scale,
// element e of x counted as index offset + e.
at::Tensor dropout_apply(at::Tensor x, int64_t seed, int64_t threshold, double scale, int64_t offset) {
  at::Tensor y = at::empty_like(x);
  const auto s0 = static_cast<uint32_t>(seed), s1 = static_cast<uint32_t>(seed >> 32);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout_apply", [&] {
    apply_impl<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel(), offset, s0, s1,
                         static_cast<uint32_t>(threshold), static_cast<scalar_t>(scale));
  });
  return y;
}

}  // namespace convattn_dropout

// torch.ops.convattn.dropout_apply: compiled within small_kernels.cpp.
TORCH_LIBRARY_FRAGMENT(convattn, m) { m.def("dropout_apply", &convattn_dropout::dropout_apply); }
