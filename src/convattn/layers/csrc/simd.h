// SIMD helpers shared by the CPU kernels: vectors of float or double as wide as the target's registers
// (GCC/Clang vector extensions: 64 bytes with AVX-512, 32 bytes otherwise), unaligned loads and stores,
// broadcasts and a vectorised exp.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace convattn_simd {

// Vectors wider than the registers are split by the compiler, and a kernel that holds L vectors of L
// lanes (a tile to transpose) then spills: on AVX2 64-byte vectors ran the kernels 2-4x slower.
// kVecRegisters: the vector registers a register-blocked loop may fill before it spills.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
constexpr int kVecRegisters = 32;
#else
constexpr int kVecBytes = 32;
constexpr int kVecRegisters = 16;
#endif

template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using vec = typename VecOf<T>::type;
template <typename T>
struct IntVecOf;
template <>
struct IntVecOf<float> {
  typedef int type __attribute__((vector_size(kVecBytes)));
};
template <>
struct IntVecOf<double> {
  typedef long long type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
constexpr int64_t kLanes = kVecBytes / sizeof(T);

template <typename T>
inline vec<T> loadu(const T* p) {
  vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void storeu(T* p, vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
// The first n lanes (0 <= n <= L) from p, zeros after them; lanes past n are never read, so the load may
// end at the last element of a buffer. AVX-512 and AVX2 use masked moves, other targets a loop.
template <typename T>
inline vec<T> load_first(const T* p, int64_t n) {
  vec<T> v = {};
#if defined(__AVX512F__)
  const auto m = static_cast<unsigned>((1ull << n) - 1);
  if constexpr (sizeof(T) == 4) {
    const __m512 r = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
    std::memcpy(&v, &r, sizeof(v));
  } else {
    const __m512d r = _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p);
    std::memcpy(&v, &r, sizeof(v));
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 r = _mm256_maskload_ps(p, m);
    std::memcpy(&v, &r, sizeof(v));
  } else {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
    const __m256d r = _mm256_maskload_pd(p, m);
    std::memcpy(&v, &r, sizeof(v));
  }
#else
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
#endif
  return v;
}

// Store the first n lanes of v at p (0 <= n <= L), leaving p[n..L) untouched.
template <typename T>
inline void store_first(T* p, vec<T> v, int64_t n) {
#if defined(__AVX512F__)
  const auto m = static_cast<unsigned>((1ull << n) - 1);
  if constexpr (sizeof(T) == 4) {
    __m512 r;
    std::memcpy(&r, &v, sizeof(v));
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), r);
  } else {
    __m512d r;
    std::memcpy(&r, &v, sizeof(v));
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(m), r);
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 r;
    std::memcpy(&r, &v, sizeof(v));
    _mm256_maskstore_ps(p, m, r);
  } else {
    const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
    __m256d r;
    std::memcpy(&r, &v, sizeof(v));
    _mm256_maskstore_pd(p, m, r);
  }
#else
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
#endif
}

// For its lifetime, this thread's SSE/AVX arithmetic reads subnormal inputs as zero and flushes
// subnormal results to zero (MXCSR's DAZ and FTZ bits), then the caller's mode is restored. Subnormals
// take a microcode assist on many x86 cores, about a hundred cycles per operation: softmax tables hold
// many (exp of a large negative score), and with them the position mix of the 16x16 attention net ran
// 3-4x slower on an Intel Xeon. Values below 2^-126 (float) or 2^-1022 (double) change by that much at
// most. Construct it inside every parallel region: each thread has its own MXCSR.
struct FlushSubnormals {
#if defined(__SSE__) || defined(__x86_64__)
  unsigned int saved = _mm_getcsr();
  FlushSubnormals() { _mm_setcsr(saved | 0x8040u); }  // FTZ (bit 15) | DAZ (bit 6)
  ~FlushSubnormals() { _mm_setcsr(saved); }
#else
  FlushSubnormals() = default;
#endif
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;
};

template <typename T>
inline vec<T> splat(T x) {
  vec<T> v = {};
  return v + x;
}

// exp of every lane to about 1 ulp (float) / 3e-16 relative (double); -inf gives exactly 0.
template <typename T>
inline vec<T> vexp(vec<T> x) {
  using I = typename IntVecOf<T>::type;
  constexpr bool dbl = sizeof(T) == 8;
  const vec<T> zero = {};
  const T lo = dbl ? -708.0 : -87.0, hi = dbl ? 709.0 : 88.0;
  const auto underflow = x < lo;
  x = x < lo ? zero + lo : x;
  x = x > hi ? zero + hi : x;
  const T ln2hi = dbl ? 6.93147180369123816490e-01 : 0.693359375;
  const T ln2lo = dbl ? 1.90821492927058770002e-10 : -2.12194440e-4;
  vec<T> n = x * T(1.4426950408889634);
  n = __builtin_convertvector(__builtin_convertvector(n + (n >= 0 ? zero + T(0.5) : zero - T(0.5)), I), vec<T>);
  const vec<T> r = x - n * ln2hi - n * ln2lo;
  vec<T> p;
  if constexpr (dbl) {
    p = zero + T(1.0 / 479001600);
    const T c[] = {1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720,
                   1.0 / 120,      1.0 / 24,      1.0 / 6,      0.5,          1.0,          1.0};
    for (T cc : c) p = p * r + cc;
  } else {
    p = zero + T(1.0 / 5040);
    const T c[] = {1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0};
    for (T cc : c) p = p * r + cc;
  }
  const I bits = (__builtin_convertvector(n, I) + (dbl ? 1023 : 127)) << (dbl ? 52 : 23);
  vec<T> two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const vec<T> res = p * two_n;
  return underflow ? zero : res;
}

// exp of x <= 0 (softmax scores minus their maximum), cheaper than vexp: no upper clamp, rounding by
// the 1.5 * 2^23 trick (the integer lands in the low mantissa bits) and a degree-6 polynomial (~1 ulp).
// -inf and x < -87.3 (results below the normal range) give exactly 0. Double precision uses vexp.
template <typename T>
inline vec<T> vexp_nonpositive(vec<T> x) {
  if constexpr (sizeof(T) == 8) {
    return vexp<T>(x);
  } else {
    using I = typename IntVecOf<T>::type;
    const vec<T> zero = {};
    const auto under = x < T(-87.3);
    x = under ? zero + T(-87.3) : x;
    const T magic = 12582912.0f;  // 1.5 * 2^23, bit pattern 0x4B400000
    const vec<T> t = x * T(1.4426950408889634) + magic;
    const vec<T> n = t - magic;  // round(x / ln 2)
    vec<T> r = x - n * T(0.693359375);
    r = r - n * T(-2.12194440e-4);
    vec<T> p = zero + T(1.0 / 720);
    const T c[] = {1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0};
    for (T cc : c) p = p * r + cc;
    I bits;
    std::memcpy(&bits, &t, sizeof(bits));
    bits = (bits - (0x4B400000 - 127)) << 23;  // 2^n
    vec<T> two_n;
    std::memcpy(&two_n, &bits, sizeof(two_n));
    return under ? zero : p * two_n;
  }
}

// In-place transpose of an L×L tile held as L vectors: stage b swaps the b×b off-diagonal blocks of
// every pair of rows (i, i + b); log2(L) stages transpose the tile.
template <typename T, int64_t B>
inline void swap_blocks(vec<T>* r) {
  using I = typename IntVecOf<T>::type;
  constexpr int64_t L = kLanes<T>;
  I lo = {}, hi = {};
  for (int64_t l = 0; l < L; ++l) {
    lo[l] = (l & B) ? L + l - B : l;
    hi[l] = (l & B) ? L + l : l + B;
  }
  for (int64_t i = 0; i < L; ++i) {
    if (i & B) continue;
    const vec<T> a = r[i], b = r[i + B];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + B] = __builtin_shuffle(a, b, hi);
  }
}
#if defined(__AVX512F__)
// 16x16 floats with AVX-512: in-lane unpacks and shuffles for the first two stages, 128-bit lane
// shuffles for the last two. Every instruction takes two sources and writes a third register, so the
// tile and its temporaries stay in registers (the generic stages compile to vpermt2ps, which overwrites
// a source, plus register copies and spills). Column n ends in a[4 (n / 4) + s(n % 4)], s swapping 1
// and 2: the second stage's shuffles put columns 1 and 2 of every 4 in each other's places.
inline void transpose16x16(__m512* a) {
  __m512 b[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {  // pairs of rows: 2x2 blocks of single floats
    b[i] = _mm512_unpacklo_ps(a[i], a[i + 1]);
    b[i + 1] = _mm512_unpackhi_ps(a[i], a[i + 1]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4)  // 2x2 blocks of float pairs
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      a[i + j] = _mm512_shuffle_ps(b[i + j], b[i + j + 2], 0x44);
      a[i + j + 2] = _mm512_shuffle_ps(b[i + j], b[i + j + 2], 0xEE);
    }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 8)  // 2x2 blocks of 128-bit lanes
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      b[i + j] = _mm512_shuffle_f32x4(a[i + j], a[i + j + 4], 0x88);
      b[i + j + 4] = _mm512_shuffle_f32x4(a[i + j], a[i + j + 4], 0xDD);
    }
#pragma GCC unroll 8
  for (int j = 0; j < 8; ++j) {  // 2x2 blocks of 256-bit halves
    a[j] = _mm512_shuffle_f32x4(b[j], b[j + 8], 0x88);
    a[j + 8] = _mm512_shuffle_f32x4(b[j], b[j + 8], 0xDD);
  }
}
constexpr int kTransposedRow[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
#endif

template <typename T>
inline void transpose_tile(vec<T>* r) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    __m512 a[16];
    for (int i = 0; i < 16; ++i) std::memcpy(&a[i], &r[i], sizeof(__m512));
    transpose16x16(a);
    for (int i = 0; i < 16; ++i) std::memcpy(&r[i], &a[kTransposedRow[i]], sizeof(__m512));
    return;
  }
#endif
  if constexpr (kLanes<T> >= 16) swap_blocks<T, 8>(r);
  if constexpr (kLanes<T> >= 8) swap_blocks<T, 4>(r);
  if constexpr (kLanes<T> >= 4) swap_blocks<T, 2>(r);
  swap_blocks<T, 1>(r);
}

// dst[c * dst_stride + l] = src[l * src_stride + c] for a full L×L tile, the tile in registers.
template <typename T>
inline void transpose_copy(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    __m512 a[16];
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) a[l] = _mm512_loadu_ps(src + l * src_stride);
    transpose16x16(a);
#pragma GCC unroll 16
    for (int c = 0; c < 16; ++c) _mm512_storeu_ps(dst + c * dst_stride, a[kTransposedRow[c]]);
    return;
  }
#endif
  constexpr int64_t L = kLanes<T>;
  vec<T> tile[L];
#pragma GCC unroll 16
  for (int64_t l = 0; l < L; ++l) tile[l] = loadu(src + l * src_stride);
  transpose_tile<T>(tile);
#pragma GCC unroll 16
  for (int64_t c = 0; c < L; ++c) storeu(dst + c * dst_stride, tile[c]);
}

}  // namespace convattn_simd
