// fastroar rank-and-mask kernels: definitions shared by the CPU (.cpp) and CUDA (.cu) sides.
//
// Semantics (fastroar/kernels/reference.py is the definition):
//   ranks[b, j] = position of coordinate j when the row is ordered by score descending,
//                 ties by lower index, -0.0 == 0.0, NaN after every number (NaNs by index);
//   n_kept(k, d) = floor(k*d + 0.5); top keeps rank < n, bottom keeps rank >= d - n;
//   masks are bit-packed along d, little bit order, shape (B, L, ceil(d/8)) uint8.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define FR_HD __host__ __device__ __forceinline__
#else
#define FR_HD inline
#endif

namespace fastroar {

// Ranks fit uint16 while d <= 65,536; int32 beyond.
constexpr int64_t kUint16MaxD = 65536;

// Order-preserving key for a descending sort: a larger float gets a smaller key,
// -0.0 is +0.0, and every NaN gets the largest key (ranks last; ties among NaNs go by index).
FR_HD uint32_t desc_key(uint32_t u) {
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  u = (u == 0x80000000u) ? 0u : u;
  // negative: key = u (more negative -> larger key); non-negative: key = 0x7fffffff - u.
  const uint32_t flip = (u & 0x80000000u) ? 0u : 0x7fffffffu;
  const uint32_t key = u ^ flip;
  return nan ? 0xffffffffu : key;
}

// Low key bits every score of type T shares with its equals (a float32 converted from fp16 has 13
// zero mantissa bits, from bf16 16): masking them keeps the order and the ties, and a sort can skip them.
template <typename T>
struct LowZero { static constexpr int bits = 0; };
template <>
struct LowZero<c10::Half> { static constexpr int bits = 13; };
template <>
struct LowZero<c10::BFloat16> { static constexpr int bits = 16; };

template <typename T>
FR_HD uint32_t low_mask() { return ~((1u << LowZero<T>::bits) - 1u); }

// Validates a (B, d) score tensor and the levels; returns n_kept for each level.
std::vector<int64_t> kept_counts(const at::Tensor& scores, c10::ArrayRef<double> levels);

// Allocates (ranks, top, bottom) for `scores` (B, d) with L levels on the scores' device.
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& scores, int64_t L);

}  // namespace fastroar
