// fastroar rank-and-mask, CUDA side: order-preserving keys -> cub segmented radix sort (stable, so
// ties keep index order) -> a kernel scattering sorted positions into the rank map -> a kernel packing
// the top/bottom bits of every level. Everything stays on the scores' device.
#include "rank_mask.h"

#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <climits>

namespace fastroar {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxLevelsPerLaunch = 32;

template <typename T>
__global__ void keys_kernel(const T* __restrict__ s, uint32_t* __restrict__ keys, int32_t* __restrict__ idx,
                            int64_t total, int64_t d) {
  const uint32_t low = low_mask<T>();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const float f = static_cast<float>(s[i]);
    keys[i] = desc_key(__float_as_uint(f)) & low;
    idx[i] = static_cast<int32_t>(i % d);
  }
}

template <typename R>
__global__ void scatter_kernel(const int32_t* __restrict__ order, R* __restrict__ ranks, int64_t total, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / d;
    ranks[b * d + order[i]] = static_cast<R>(i - b * d);
  }
}

struct Levels {
  int64_t n[kMaxLevelsPerLaunch];
  int count;
  int first;  // index of n[0] among all levels
};

// One thread per (row, byte): bits of 8 coordinates for every level of this launch.
template <typename R>
__global__ void pack_kernel(const R* __restrict__ ranks, int64_t B, int64_t d, int64_t nb, int64_t L, Levels lv,
                            uint8_t* __restrict__ top, uint8_t* __restrict__ bottom) {
  const int64_t total = B * nb;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / nb, j = i - b * nb;
    const R* r = ranks + b * d + 8 * j;
    const int e = d - 8 * j < 8 ? static_cast<int>(d - 8 * j) : 8;
    int64_t v[8];
#pragma unroll
    for (int q = 0; q < 8; ++q) v[q] = q < e ? static_cast<int64_t>(r[q]) : -1;
    for (int l = 0; l < lv.count; ++l) {
      const int64_t nt = lv.n[l], tb = d - lv.n[l];
      uint32_t bt = 0, bb = 0;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        bt |= static_cast<uint32_t>(v[q] >= 0 && v[q] < nt) << q;
        bb |= static_cast<uint32_t>(v[q] >= tb) << q;
      }
      const int64_t o = (b * L + lv.first + l) * nb + j;
      top[o] = static_cast<uint8_t>(bt);
      bottom[o] = static_cast<uint8_t>(bb);
    }
  }
}

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 8)));
}

#define FR_CUDA_CHECK(expr)                                                              \
  do {                                                                                   \
    cudaError_t err__ = (expr);                                                          \
    TORCH_CHECK(err__ == cudaSuccess, "fastroar CUDA error: ", cudaGetErrorString(err__)); \
  } while (0)

template <typename T, typename R>
void run_cuda(const at::Tensor& scores, at::Tensor& ranks, const std::vector<int64_t>& n, at::Tensor& top,
              at::Tensor& bottom) {
  const int64_t B = scores.size(0), d = scores.size(1), nb = (d + 7) / 8, L = static_cast<int64_t>(n.size());
  if (B == 0 || d == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto opt = scores.options();
  const T* s = static_cast<const T*>(scores.const_data_ptr());
  R* rk = static_cast<R*>(ranks.data_ptr());

  // cub takes int item counts: sort in groups of rows of fewer than 2^31 items.
  const int64_t rows_per_call = std::max<int64_t>(1, std::min<int64_t>(B, INT_MAX / d));
  const int64_t items = rows_per_call * d;
  auto k0 = at::empty({items}, opt.dtype(at::kInt));
  auto k1 = at::empty({items}, opt.dtype(at::kInt));
  auto v0 = at::empty({items}, opt.dtype(at::kInt));
  auto v1 = at::empty({items}, opt.dtype(at::kInt));
  auto offsets = at::arange(0, (rows_per_call + 1) * d, d, opt.dtype(at::kLong));
  const int64_t* off = offsets.const_data_ptr<int64_t>();
  const int begin_bit = LowZero<T>::bits;

  size_t temp_bytes = 0;
  {
    cub::DoubleBuffer<uint32_t> kb(reinterpret_cast<uint32_t*>(k0.data_ptr()), reinterpret_cast<uint32_t*>(k1.data_ptr()));
    cub::DoubleBuffer<int32_t> vb(v0.data_ptr<int32_t>(), v1.data_ptr<int32_t>());
    FR_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(nullptr, temp_bytes, kb, vb, static_cast<int>(items),
                                                           static_cast<int>(rows_per_call), off, off + 1, begin_bit,
                                                           32, stream));
  }
  auto temp = at::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, opt.dtype(at::kByte));

  for (int64_t r0 = 0; r0 < B; r0 += rows_per_call) {
    const int64_t rows = std::min(rows_per_call, B - r0);
    const int64_t cnt = rows * d;
    cub::DoubleBuffer<uint32_t> kb(reinterpret_cast<uint32_t*>(k0.data_ptr()), reinterpret_cast<uint32_t*>(k1.data_ptr()));
    cub::DoubleBuffer<int32_t> vb(v0.data_ptr<int32_t>(), v1.data_ptr<int32_t>());
    keys_kernel<T><<<blocks_for(cnt), kThreads, 0, stream>>>(s + r0 * d, kb.Current(), vb.Current(), cnt, d);
    FR_CUDA_CHECK(cudaGetLastError());
    size_t tb = temp_bytes;
    FR_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairs(temp.data_ptr(), tb, kb, vb, static_cast<int>(cnt),
                                                           static_cast<int>(rows), off, off + 1, begin_bit, 32,
                                                           stream));
    scatter_kernel<R><<<blocks_for(cnt), kThreads, 0, stream>>>(vb.Current(), rk + r0 * d, cnt, d);
    FR_CUDA_CHECK(cudaGetLastError());
  }
  if (L == 0) return;
  for (int64_t l0 = 0; l0 < L; l0 += kMaxLevelsPerLaunch) {
    Levels lv{};
    lv.first = static_cast<int>(l0);
    lv.count = static_cast<int>(std::min<int64_t>(kMaxLevelsPerLaunch, L - l0));
    for (int q = 0; q < lv.count; ++q) lv.n[q] = n[l0 + q];
    pack_kernel<R><<<blocks_for(B * nb), kThreads, 0, stream>>>(rk, B, d, nb, L, lv, top.data_ptr<uint8_t>(),
                                                                 bottom.data_ptr<uint8_t>());
    FR_CUDA_CHECK(cudaGetLastError());
  }
}

template <typename T>
void run_cuda_typed(const at::Tensor& scores, at::Tensor& ranks, const std::vector<int64_t>& n, at::Tensor& top,
                    at::Tensor& bottom) {
  if (scores.size(1) <= kUint16MaxD)
    run_cuda<T, uint16_t>(scores, ranks, n, top, bottom);
  else
    run_cuda<T, int32_t>(scores, ranks, n, top, bottom);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rank_and_mask_cuda(const at::Tensor& scores_in,
                                                                  c10::ArrayRef<double> levels) {
  const auto n = kept_counts(scores_in, levels);
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  auto [ranks, top, bottom] = allocate_outputs(scores, static_cast<int64_t>(n.size()));
  switch (scores.scalar_type()) {
    case at::kFloat: run_cuda_typed<float>(scores, ranks, n, top, bottom); break;
    case at::kHalf: run_cuda_typed<c10::Half>(scores, ranks, n, top, bottom); break;
    case at::kBFloat16: run_cuda_typed<c10::BFloat16>(scores, ranks, n, top, bottom); break;
    default: TORCH_CHECK(false, "unreachable");
  }
  return {ranks, top, bottom};
}

}  // namespace
}  // namespace fastroar

TORCH_LIBRARY_IMPL(fastroar, CUDA, m) { m.impl("rank_and_mask", &fastroar::rank_and_mask_cuda); }
