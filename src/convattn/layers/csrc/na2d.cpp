// Neighbourhood attention in 2-D on heads-last tensors (B, H, W, heads, d): forward and backward.
//
// Windows come from per-axis tables built in Python (convattn/layers/neighborhood.py):
//   index (n, k): key position of slot t for query i;  valid (n, k): inside the image;
//   offset (n, k): rel/bias table index (key - query in steps, + k - 1).
// The backward gathers key gradients through inverse tables inv (n, m, 2) of (query, slot) pairs, so
// every output element is written by one thread and no atomics are needed.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <vector>

namespace {

struct Geometry {
  int64_t B, H, W, NH, D, DV, KH, KW, K, TH, TW;  // TH, TW: rel/bias table sides (2k - 1)
};

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}

template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += alpha * x[c];
}

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, const T* rel, const T* bias,
                  const int64_t* r_idx, const bool* r_ok, const int64_t* r_off,
                  const int64_t* c_idx, const bool* c_ok, const int64_t* c_off,
                  T scale, bool zeros, const Geometry& g, T* out, T* probs) {
  const int64_t C = g.NH * g.D, CV = g.NH * g.DV;
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(g.K);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.H, i = row % g.H;
      for (int64_t j = 0; j < g.W; ++j) {
        const int64_t pix = (b * g.H + i) * g.W + j;
        const T* qp = q + pix * C;
        T* pp = probs + pix * g.NH * g.K;
        T* op = out + pix * CV;
        for (int64_t c = 0; c < CV; ++c) op[c] = 0;
        for (int64_t h = 0; h < g.NH; ++h) {
          const T* qh = qp + h * g.D;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t a = 0; a < g.KH; ++a) {
            const int64_t ra = r_idx[i * g.KH + a], oa = r_off[i * g.KH + a];
            const bool va = r_ok[i * g.KH + a];
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb;
              const bool inside = va && c_ok[j * g.KW + bb];
              if (!inside && !zeros) {
                s[t] = -std::numeric_limits<T>::infinity();
                continue;
              }
              const int64_t cb = c_idx[j * g.KW + bb], ob = c_off[j * g.KW + bb];
              T acc = inside ? scale * dot(qh, k + ((b * g.H + ra) * g.W + cb) * C + h * g.D, g.D) : T(0);
              if (rel) acc += dot(qh, rel + ((oa * g.TW + ob) * g.NH + h) * g.D, g.D);
              if (bias) acc += bias[(h * g.TH + oa) * g.TW + ob];
              s[t] = acc;
              mx = acc > mx ? acc : mx;
            }
          }
          T sum = 0;
          for (int64_t t = 0; t < g.K; ++t) {
            const T e = std::isinf(s[t]) ? T(0) : std::exp(s[t] - mx);
            s[t] = e;
            sum += e;
          }
          T* oh = op + h * g.DV;
          for (int64_t a = 0; a < g.KH; ++a) {
            const int64_t ra = r_idx[i * g.KH + a];
            const bool va = r_ok[i * g.KH + a];
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb;
              const T p = s[t] / sum;
              pp[h * g.K + t] = p;
              if (p == T(0) || !(va && c_ok[j * g.KW + bb])) continue;  // outside values are zero
              const int64_t cb = c_idx[j * g.KW + bb];
              axpy(p, v + ((b * g.H + ra) * g.W + cb) * CV + h * g.DV, oh, g.DV);
            }
          }
        }
      }
    }
  });
}

// Pass 1, per query: dS = P * (dP - sum P dP), dq, and the rel/bias gradients (per-thread sums).
template <typename T>
void backward_queries(const T* dout, const T* q, const T* k, const T* v, const T* rel, const T* probs,
                      const int64_t* r_idx, const bool* r_ok, const int64_t* r_off,
                      const int64_t* c_idx, const bool* c_ok, const int64_t* c_off,
                      T scale, const Geometry& g, T* dq, T* ds, T* drel, T* dbias, bool want_rel,
                      bool want_bias) {
  const int64_t C = g.NH * g.D, CV = g.NH * g.DV;
  const int64_t nrel = g.TH * g.TW * g.NH * g.D, nbias = g.NH * g.TH * g.TW;
  const int nthreads = at::get_num_threads();
  std::vector<std::vector<T>> rel_parts(want_rel ? nthreads : 0), bias_parts(want_bias ? nthreads : 0);
  for (auto& part : rel_parts) part.assign(nrel, T(0));
  for (auto& part : bias_parts) part.assign(nbias, T(0));
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    T* my_rel = want_rel ? rel_parts[tid].data() : nullptr;
    T* my_bias = want_bias ? bias_parts[tid].data() : nullptr;
    std::vector<T> dp(g.K);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.H, i = row % g.H;
      for (int64_t j = 0; j < g.W; ++j) {
        const int64_t pix = (b * g.H + i) * g.W + j;
        for (int64_t h = 0; h < g.NH; ++h) {
          const T* doh = dout + pix * CV + h * g.DV;
          const T* ph = probs + (pix * g.NH + h) * g.K;
          T* dsh = ds + (pix * g.NH + h) * g.K;
          T total = 0;
          for (int64_t a = 0; a < g.KH; ++a) {
            const int64_t ra = r_idx[i * g.KH + a];
            const bool va = r_ok[i * g.KH + a];
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb;
              const bool inside = va && c_ok[j * g.KW + bb];
              const int64_t cb = c_idx[j * g.KW + bb];
              dp[t] = (inside && ph[t] != T(0)) ? dot(doh, v + ((b * g.H + ra) * g.W + cb) * CV + h * g.DV, g.DV) : T(0);
              total += ph[t] * dp[t];
            }
          }
          const T* qh = q + pix * C + h * g.D;
          T* dqh = dq + pix * C + h * g.D;
          for (int64_t c = 0; c < g.D; ++c) dqh[c] = 0;
          for (int64_t a = 0; a < g.KH; ++a) {
            const int64_t ra = r_idx[i * g.KH + a], oa = r_off[i * g.KH + a];
            const bool va = r_ok[i * g.KH + a];
            for (int64_t bb = 0; bb < g.KW; ++bb) {
              const int64_t t = a * g.KW + bb;
              const T d = ph[t] * (dp[t] - total);
              dsh[t] = d;
              if (d == T(0)) continue;
              const int64_t cb = c_idx[j * g.KW + bb], ob = c_off[j * g.KW + bb];
              if (va && c_ok[j * g.KW + bb]) axpy(scale * d, k + ((b * g.H + ra) * g.W + cb) * C + h * g.D, dqh, g.D);
              if (rel) {
                axpy(d, rel + ((oa * g.TW + ob) * g.NH + h) * g.D, dqh, g.D);
                if (my_rel) axpy(d, qh, my_rel + ((oa * g.TW + ob) * g.NH + h) * g.D, g.D);
              }
              if (my_bias) my_bias[(h * g.TH + oa) * g.TW + ob] += d;
            }
          }
        }
      }
    }
  });
  for (auto& part : rel_parts)
    for (int64_t x = 0; x < nrel; ++x) drel[x] += part[x];
  for (auto& part : bias_parts)
    for (int64_t x = 0; x < nbias; ++x) dbias[x] += part[x];
}

// Pass 2, per key: dk = scale * sum dS q and dv = sum P dout over the queries whose window holds it.
template <typename T>
void backward_keys(const T* dout, const T* q, const T* probs, const T* ds, const int64_t* r_inv,
                   int64_t mr, const int64_t* c_inv, int64_t mc, T scale, const Geometry& g, T* dk,
                   T* dv) {
  const int64_t C = g.NH * g.D, CV = g.NH * g.DV;
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / g.H, ra = row % g.H;
      for (int64_t cb = 0; cb < g.W; ++cb) {
        const int64_t key = (b * g.H + ra) * g.W + cb;
        T* dkp = dk + key * C;
        T* dvp = dv + key * CV;
        for (int64_t c = 0; c < C; ++c) dkp[c] = 0;
        for (int64_t c = 0; c < CV; ++c) dvp[c] = 0;
        for (int64_t x = 0; x < mr; ++x) {
          const int64_t i = r_inv[(ra * mr + x) * 2], a = r_inv[(ra * mr + x) * 2 + 1];
          if (i < 0) break;
          for (int64_t y = 0; y < mc; ++y) {
            const int64_t j = c_inv[(cb * mc + y) * 2], bb = c_inv[(cb * mc + y) * 2 + 1];
            if (j < 0) break;
            const int64_t pix = (b * g.H + i) * g.W + j, t = a * g.KW + bb;
            for (int64_t h = 0; h < g.NH; ++h) {
              const T d = ds[(pix * g.NH + h) * g.K + t], p = probs[(pix * g.NH + h) * g.K + t];
              if (d != T(0)) axpy(scale * d, q + pix * C + h * g.D, dkp + h * g.D, g.D);
              if (p != T(0)) axpy(p, dout + pix * CV + h * g.DV, dvp + h * g.DV, g.DV);
            }
          }
        }
      }
    }
  });
}

Geometry geometry(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& r_idx,
                  const torch::Tensor& c_idx) {
  Geometry g;
  g.B = q.size(0); g.H = q.size(1); g.W = q.size(2); g.NH = q.size(3); g.D = q.size(4);
  g.DV = v.size(4); g.KH = r_idx.size(1); g.KW = c_idx.size(1); g.K = g.KH * g.KW;
  g.TH = 2 * g.KH - 1; g.TW = 2 * g.KW - 1;
  return g;
}

template <typename T>
const T* optional_ptr(const torch::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

}  // namespace

std::vector<torch::Tensor> na2d_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor rel,
                                        torch::Tensor bias, torch::Tensor r_idx, torch::Tensor r_ok,
                                        torch::Tensor r_off, torch::Tensor c_idx, torch::Tensor c_ok,
                                        torch::Tensor c_off, double scale, bool zeros) {
  const Geometry g = geometry(q, v, r_idx, c_idx);
  auto out = torch::empty({g.B, g.H, g.W, g.NH, g.DV}, v.options());
  auto probs = torch::empty({g.B, g.H, g.W, g.NH, g.K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_forward", [&] {
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           optional_ptr<scalar_t>(rel), optional_ptr<scalar_t>(bias),
                           r_idx.data_ptr<int64_t>(), r_ok.data_ptr<bool>(), r_off.data_ptr<int64_t>(),
                           c_idx.data_ptr<int64_t>(), c_ok.data_ptr<bool>(), c_off.data_ptr<int64_t>(),
                           static_cast<scalar_t>(scale), zeros, g, out.data_ptr<scalar_t>(),
                           probs.data_ptr<scalar_t>());
  });
  return {out, probs};
}

std::vector<torch::Tensor> na2d_backward(torch::Tensor dout, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                         torch::Tensor rel, torch::Tensor bias, torch::Tensor probs,
                                         torch::Tensor r_idx, torch::Tensor r_ok, torch::Tensor r_off,
                                         torch::Tensor c_idx, torch::Tensor c_ok, torch::Tensor c_off,
                                         torch::Tensor r_inv, torch::Tensor c_inv, double scale,
                                         bool want_rel, bool want_bias) {
  const Geometry g = geometry(q, v, r_idx, c_idx);
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  auto ds = torch::empty_like(probs);
  auto drel = torch::zeros({want_rel ? g.TH : 0, g.TW, g.NH, g.D}, q.options());
  auto dbias = torch::zeros({want_bias ? g.NH : 0, g.TH, g.TW}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward", [&] {
    const auto s = static_cast<scalar_t>(scale);
    backward_queries<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                               v.data_ptr<scalar_t>(), optional_ptr<scalar_t>(rel), probs.data_ptr<scalar_t>(),
                               r_idx.data_ptr<int64_t>(), r_ok.data_ptr<bool>(), r_off.data_ptr<int64_t>(),
                               c_idx.data_ptr<int64_t>(), c_ok.data_ptr<bool>(), c_off.data_ptr<int64_t>(), s, g,
                               dq.data_ptr<scalar_t>(), ds.data_ptr<scalar_t>(),
                               want_rel ? drel.data_ptr<scalar_t>() : nullptr,
                               want_bias ? dbias.data_ptr<scalar_t>() : nullptr, want_rel, want_bias);
    backward_keys<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), probs.data_ptr<scalar_t>(),
                            ds.data_ptr<scalar_t>(), r_inv.data_ptr<int64_t>(), r_inv.size(1),
                            c_inv.data_ptr<int64_t>(), c_inv.size(1), s, g, dk.data_ptr<scalar_t>(),
                            dv.data_ptr<scalar_t>());
  });
  return {dq, dk, dv, drel, dbias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &na2d_forward, "neighbourhood attention 2-D forward (CPU)");
  m.def("backward", &na2d_backward, "neighbourhood attention 2-D backward (CPU)");
}
