// What every kernel file includes: ATen's tensor, the few factory functions the kernels call, its thread
// pool and dtype dispatch, and the operator registry. Not torch/extension.h or ATen/ATen.h: parsing every
// operator's declaration and pybind11 would double the build, and no kernel uses them.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>
