// What every kernel file includes: ATen's tensor, the few factory functions the kernels call, its thread
// pool and dtype dispatch, and the operator registry. Not torch/extension.h or ATen/ATen.h: parsing every
// operator's declaration and pybind11 would double the build, and no kernel uses them.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace convattn_common {

// The pixel stride of heads-last x (B, H, W, NH, d) whose heads and channels are packed and whose pixels
// lie ps apart: NH d for a contiguous tensor, 3 NH d for the q, k and v views of one (B, H, W, 3, NH, d)
// tensor. Strides of dimensions of size 1 say nothing, and are not checked.
inline int64_t pixel_stride(const at::Tensor& x, const char* kernel) {
  const int64_t H = x.size(1), W = x.size(2), NH = x.size(3), d = x.size(4);
  int64_t ps = NH * d;
  if (W > 1)
    ps = x.stride(2);
  else if (H > 1)
    ps = x.stride(1);
  else if (x.size(0) > 1)
    ps = x.stride(0);
  auto fits = [&](int64_t dim, int64_t want) { return x.size(dim) == 1 || x.stride(dim) == want; };
  TORCH_CHECK(fits(4, 1) && fits(3, d) && fits(2, ps) && fits(1, W * ps) && fits(0, H * W * ps) && ps >= NH * d,
              kernel, " kernel: expected heads-last pixels with packed heads, got strides ", x.strides());
  return ps;
}

// Elements from q to k and from k to v when q, k and v are the three views of one (B, H, W, 3, NH, d)
// tensor, in that order and laid out alike (channels last, or an NCHW tensor's permuted view); 0 when
// they are not.
inline int64_t packed_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  if (k.sizes() != q.sizes() || v.sizes() != q.sizes() || k.strides() != q.strides() || v.strides() != q.strides())
    return 0;
  const int64_t bytes = static_cast<const char*>(k.data_ptr()) - static_cast<const char*>(q.data_ptr());
  const bool even = static_cast<const char*>(v.data_ptr()) - static_cast<const char*>(k.data_ptr()) == bytes;
  return even && bytes > 0 && bytes % q.element_size() == 0 ? bytes / q.element_size() : 0;
}

// The gradient of the qkv whose views q and k are (packed_step apart): laid out as qkv is.
inline at::Tensor empty_packed_like(const at::Tensor& q, int64_t step) {
  const auto s = q.strides();
  return at::empty_strided({q.size(0), q.size(1), q.size(2), 3, q.size(3), q.size(4)},
                           {s[0], s[1], s[2], step, s[3], s[4]}, q.options());
}

}  // namespace convattn_common
