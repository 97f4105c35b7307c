// fastroar rank-and-mask, CPU side, and the op registration (torch.ops.fastroar.*).
//
// Per row: an LSD radix sort of order-preserving uint32 keys (rank_mask.h: desc_key) carrying the
// coordinate index, stable passes, so ties keep index order. One pass over the scores builds the
// histograms of every digit; a digit whose histogram is a single bucket is skipped (fp16/bf16 inputs
// skip the low digit, constant rows skip everything). The first executed pass reads the scores
// directly, the last one scatters the sorted position into the rank map, and the bit-packed masks
// are built from the rank map with vector compares. Rows run in parallel (at::parallel_for), each
// thread reusing its scratch across its rows.
#include "rank_mask.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <Python.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <cstring>
#include <memory>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FR_X86 1
#endif

namespace fastroar {

// Numbers in error messages are formatted with snprintf, not streamed: streaming an int64 or a double
// into TORCH_CHECK's message crashed (SIGSEGV) with torch 2.11 wheels and a GCC 13 build of this file.
static std::string fmt_int(int64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  return buf;
}

static std::string fmt_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

std::vector<int64_t> kept_counts(const at::Tensor& scores, c10::ArrayRef<double> levels) {
  TORCH_CHECK(scores.dim() == 2, "fastroar::rank_and_mask: scores must be (B, d), got ", fmt_int(scores.dim()),
              " dimensions");
  const auto st = scores.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16,
              "fastroar::rank_and_mask: scores must be float32, float16 or bfloat16, got ", c10::toString(st));
  const int64_t d = scores.size(1);
  TORCH_CHECK(d <= (int64_t{1} << 31) - 1, "fastroar::rank_and_mask: d = ", fmt_int(d), " is too large");
  std::vector<int64_t> n;
  n.reserve(levels.size());
  for (double k : levels) {
    TORCH_CHECK(k > 0.0 && k < 1.0, "fastroar::rank_and_mask: every level k must lie in (0, 1), got ", fmt_double(k));
    // floor(k*d + 0.5) exactly as Python computes it (two correctly rounded double ops, no fma).
    volatile double p = k * static_cast<double>(d);
    n.push_back(static_cast<int64_t>(std::floor(p + 0.5)));
  }
  return n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& scores, int64_t L) {
  const int64_t B = scores.size(0), d = scores.size(1), nb = (d + 7) / 8;
  auto opt = scores.options();
  auto ranks = at::empty({B, d}, opt.dtype(d <= kUint16MaxD ? at::kUInt16 : at::kInt));
  auto top = at::empty({B, L, nb}, opt.dtype(at::kByte));
  auto bottom = at::empty({B, L, nb}, opt.dtype(at::kByte));
  return {ranks, top, bottom};
}

namespace {

template <typename T>
inline uint32_t float_bits(T v) {
  const float f = static_cast<float>(v);
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

template <typename T>
inline uint32_t key_of(const T* s, int64_t i) {
  return desc_key(float_bits(s[i])) & low_mask<T>();
}

// Per-thread scratch, grown on demand and reused across rows.
struct Scratch {
  std::unique_ptr<uint64_t[]> a, b;  // (key << 32 | index) pairs
  std::unique_ptr<uint32_t[]> hist;
  int64_t cap = 0;
  void reserve(int64_t d, int64_t hist_size) {
    if (d > cap) {
      a.reset(new uint64_t[d]);
      b.reset(new uint64_t[d]);
      cap = d;
    }
    if (!hist) hist.reset(new uint32_t[hist_size]);
  }
};

// NP passes of BITS-bit digits over the 32-bit key (the last digit takes what remains).
template <int NP, int BITS>
struct Plan {
  static constexpr int kPasses = NP;
  static constexpr int kBits = BITS;
  static constexpr uint32_t kMask = (1u << BITS) - 1u;
  static constexpr int kBuckets = 1 << BITS;
  static_assert(NP * BITS >= 32, "the passes must cover the key");
};

// Ranks one row: rank[j] = position of coordinate j in the descending, index-stable order.
template <class P, typename T, typename R>
void rank_row(const T* s, int64_t d, R* rank, Scratch& sc) {
  constexpr int NP = P::kPasses, NB = P::kBuckets, BITS = P::kBits;
  constexpr uint32_t M = P::kMask;
  if (d == 0) return;
  uint32_t* h = sc.hist.get();
  std::memset(h, 0, sizeof(uint32_t) * NP * NB);
  for (int64_t i = 0; i < d; ++i) {
    const uint32_t k = key_of(s, i);
    for (int p = 0; p < NP; ++p) ++h[p * NB + ((k >> (p * BITS)) & M)];
  }
  // Passes whose digit is the same for every key move nothing: skip them.
  int act[NP];
  int na = 0;
  const uint32_t k0 = key_of(s, 0);
  for (int p = 0; p < NP; ++p) {
    uint32_t* hp = h + p * NB;
    if (hp[(k0 >> (p * BITS)) & M] == static_cast<uint32_t>(d)) continue;
    act[na++] = p;
    uint32_t sum = 0;
    for (int b = 0; b < NB; ++b) {
      const uint32_t c = hp[b];
      hp[b] = sum;
      sum += c;
    }
  }
  if (na == 0) {  // every key equal: index order
    for (int64_t i = 0; i < d; ++i) rank[i] = static_cast<R>(i);
    return;
  }
  if (na == 1) {  // one pass straight from the scores to the ranks
    const int sh = act[0] * BITS;
    uint32_t* off = h + act[0] * NB;
    for (int64_t i = 0; i < d; ++i) {
      const uint32_t k = key_of(s, i);
      rank[i] = static_cast<R>(off[(k >> sh) & M]++);
    }
    return;
  }
  // The pass before the last may write compact 32-bit entries (last digit << ib | index) when they fit:
  // the last pass then reads half the bytes (~10% faster at d = 150,528).
  int ib = 1;
  while ((int64_t{1} << ib) < d) ++ib;
  const bool compact = BITS + ib <= 32;
  const uint32_t im = (ib >= 32) ? 0xffffffffu : ((1u << ib) - 1u);
  const int sh_last = act[na - 1] * BITS;
  uint64_t* src = sc.a.get();
  uint64_t* dst = sc.b.get();
  uint32_t* csrc = reinterpret_cast<uint32_t*>(dst);  // compact entries live in the buffer not read last
  {  // first pass: scores -> pairs (or compact entries when it is also the pass before the last)
    const int sh = act[0] * BITS;
    uint32_t* off = h + act[0] * NB;
    if (compact && na == 2) {
      for (int64_t i = 0; i < d; ++i) {
        const uint32_t k = key_of(s, i);
        csrc[off[(k >> sh) & M]++] = (((k >> sh_last) & M) << ib) | static_cast<uint32_t>(i);
      }
    } else {
      for (int64_t i = 0; i < d; ++i) {
        const uint32_t k = key_of(s, i);
        src[off[(k >> sh) & M]++] = (static_cast<uint64_t>(k) << 32) | static_cast<uint64_t>(i);
      }
    }
  }
  for (int a = 1; a + 1 < na; ++a) {  // middle passes: pairs -> pairs (-> compact entries before the last)
    const int sh = 32 + act[a] * BITS;
    uint32_t* off = h + act[a] * NB;
    if (compact && a + 2 == na) {
      csrc = reinterpret_cast<uint32_t*>(dst);
      for (int64_t i = 0; i < d; ++i) {
        const uint64_t v = src[i];
        csrc[off[(v >> sh) & M]++] =
            (static_cast<uint32_t>((v >> (32 + sh_last)) & M) << ib) | static_cast<uint32_t>(v);
      }
    } else {
      for (int64_t i = 0; i < d; ++i) {
        const uint64_t v = src[i];
        dst[off[(v >> sh) & M]++] = v;
      }
      std::swap(src, dst);
    }
  }
  uint32_t* off = h + act[na - 1] * NB;
  if (compact) {  // last pass: compact entries -> ranks
    for (int64_t i = 0; i < d; ++i) {
      const uint32_t v = csrc[i];
      rank[v & im] = static_cast<R>(off[v >> ib]++);
    }
  } else {  // last pass: pairs -> ranks
    const int sh = 32 + sh_last;
    for (int64_t i = 0; i < d; ++i) {
      const uint64_t v = src[i];
      rank[static_cast<uint32_t>(v)] = static_cast<R>(off[(v >> sh) & M]++);
    }
  }
}

// Masks of one row from its ranks: top[l] bit j = rank[j] < n[l]; bottom[l] bit j = rank[j] >= d - n[l].
// top/bottom point at the row's (L, nb) block.
template <typename R>
void masks_row_scalar(const R* r, int64_t d, const int64_t* n, int64_t L, uint8_t* top, uint8_t* bottom,
                      int64_t j0 = 0) {
  const int64_t nb = (d + 7) / 8;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t nt = n[l], tb = d - n[l];
    uint8_t* t = top + l * nb;
    uint8_t* bo = bottom + l * nb;
    for (int64_t j = j0; j < nb; ++j) {
      uint32_t bt = 0, bb = 0;
      const int64_t e = std::min<int64_t>(8, d - 8 * j);
      for (int64_t i = 0; i < e; ++i) {
        const int64_t v = static_cast<int64_t>(r[8 * j + i]);
        bt |= static_cast<uint32_t>(v < nt) << i;
        bb |= static_cast<uint32_t>(v >= tb) << i;
      }
      t[j] = static_cast<uint8_t>(bt);
      bo[j] = static_cast<uint8_t>(bb);
    }
  }
}

#ifdef FR_X86
// AVX-512: 16 (int32) or 32 (uint16) coordinates per compare, the compare mask is the packed bits.
__attribute__((target("avx512f,avx512bw"))) void masks_row_avx512(const uint16_t* r, int64_t d, const int64_t* n,
                                                                   int64_t L, uint8_t* top, uint8_t* bottom) {
  const int64_t nb = (d + 7) / 8;
  const int64_t full = d / 32;  // 32 coordinates = 4 bytes per step
  // uint16 compares: top r < n (n <= 65536: saturate, rank <= 65535 < 65536 always true),
  // bottom r >= d - n (d - n >= 0 fits 65536 likewise).
  for (int64_t l = 0; l < L; ++l) {
    const int64_t nt = n[l], tb = d - n[l];
    const __m512i vt = _mm512_set1_epi16(static_cast<short>(static_cast<uint16_t>(std::min<int64_t>(nt, 65535))));
    const __m512i vb = _mm512_set1_epi16(static_cast<short>(static_cast<uint16_t>(std::min<int64_t>(tb, 65535))));
    const bool all_top = nt > 65535, none_bottom = tb > 65535;
    uint8_t* t = top + l * nb;
    uint8_t* bo = bottom + l * nb;
    for (int64_t j = 0; j < full; ++j) {
      const __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(r + 32 * j));
      uint32_t mt = all_top ? 0xffffffffu : static_cast<uint32_t>(_mm512_cmplt_epu16_mask(v, vt));
      uint32_t mb = none_bottom ? 0u : static_cast<uint32_t>(_mm512_cmpge_epu16_mask(v, vb));
      std::memcpy(t + 4 * j, &mt, 4);
      std::memcpy(bo + 4 * j, &mb, 4);
    }
  }
  if (4 * full < nb) masks_row_scalar(r, d, n, L, top, bottom, 4 * full);
}

__attribute__((target("avx512f"))) void masks_row_avx512(const int32_t* r, int64_t d, const int64_t* n, int64_t L,
                                                         uint8_t* top, uint8_t* bottom) {
  const int64_t nb = (d + 7) / 8;
  const int64_t full = d / 16;  // 16 coordinates = 2 bytes per step
  for (int64_t l = 0; l < L; ++l) {
    const __m512i vt = _mm512_set1_epi32(static_cast<int32_t>(n[l]));
    const __m512i vb = _mm512_set1_epi32(static_cast<int32_t>(d - n[l]));
    uint8_t* t = top + l * nb;
    uint8_t* bo = bottom + l * nb;
    for (int64_t j = 0; j < full; ++j) {
      const __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(r + 16 * j));
      const uint16_t mt = _mm512_cmplt_epi32_mask(v, vt);
      const uint16_t mb = _mm512_cmpge_epi32_mask(v, vb);
      std::memcpy(t + 2 * j, &mt, 2);
      std::memcpy(bo + 2 * j, &mb, 2);
    }
  }
  if (2 * full < nb) masks_row_scalar(r, d, n, L, top, bottom, 2 * full);
}

// AVX2: 8 coordinates per compare, movemask gives the byte.
template <typename R>
__attribute__((target("avx2"))) inline __m256i load8_avx2(const R* r);
template <>
__attribute__((target("avx2"))) inline __m256i load8_avx2<uint16_t>(const uint16_t* r) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r)));
}
template <>
__attribute__((target("avx2"))) inline __m256i load8_avx2<int32_t>(const int32_t* r) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r));
}

template <typename R>
__attribute__((target("avx2"))) void masks_row_avx2(const R* r, int64_t d, const int64_t* n, int64_t L, uint8_t* top,
                                                    uint8_t* bottom) {
  const int64_t nb = (d + 7) / 8;
  const int64_t full = d / 8;
  for (int64_t l = 0; l < L; ++l) {
    // rank < n  <=>  n > rank ;  rank >= d - n  <=>  rank > d - n - 1 (signed, ranks < 2^31)
    const __m256i vt = _mm256_set1_epi32(static_cast<int32_t>(n[l]));
    const __m256i vb = _mm256_set1_epi32(static_cast<int32_t>(d - n[l] - 1));
    uint8_t* t = top + l * nb;
    uint8_t* bo = bottom + l * nb;
    for (int64_t j = 0; j < full; ++j) {
      const __m256i v = load8_avx2<R>(r + 8 * j);
      t[j] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vt, v))));
      bo[j] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(v, vb))));
    }
  }
  if (full < nb) masks_row_scalar(r, d, n, L, top, bottom, full);
}
#endif

enum class Isa { kScalar, kAvx2, kAvx512 };

Isa detect_isa() {
#ifdef FR_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2")) return Isa::kAvx2;
#endif
  return Isa::kScalar;
}

template <typename R>
void masks_row(Isa isa, const R* r, int64_t d, const int64_t* n, int64_t L, uint8_t* top, uint8_t* bottom) {
#ifdef FR_X86
  if (isa == Isa::kAvx512) return masks_row_avx512(r, d, n, L, top, bottom);
  if (isa == Isa::kAvx2) return masks_row_avx2<R>(r, d, n, L, top, bottom);
#endif
  masks_row_scalar(r, d, n, L, top, bottom);
}

// Rows up to this length sort with 4 passes of 8-bit digits (the 3 x 2048-bucket histograms and their
// prefix sums would dominate), longer ones with 3 passes of 11 bits (measured: 3 x 11 is ~20% faster
// from d ~ 2k, e.g. at d = 3,072, and at d = 150,528).
constexpr int64_t kSmallD = 2048;

template <typename T, typename R>
void run_cpu(const T* s, int64_t B, int64_t d, R* ranks, const std::vector<int64_t>& n, uint8_t* top,
             uint8_t* bottom) {
  const int64_t L = static_cast<int64_t>(n.size()), nb = (d + 7) / 8;
  static const Isa isa = detect_isa();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    Scratch sc;
    for (int64_t b = b0; b < b1; ++b) {
      const T* row = s + b * d;
      R* rk = ranks + b * d;
      if (d <= kSmallD) {
        using P = Plan<4, 8>;
        sc.reserve(d, P::kPasses * P::kBuckets);
        rank_row<P>(row, d, rk, sc);
      } else {
        using P = Plan<3, 11>;
        sc.reserve(d, P::kPasses * P::kBuckets);
        rank_row<P>(row, d, rk, sc);
      }
      if (L > 0) masks_row(isa, rk, d, n.data(), L, top + b * L * nb, bottom + b * L * nb);
    }
  });
}

template <typename T>
void run_cpu_typed(const at::Tensor& scores, at::Tensor& ranks, const std::vector<int64_t>& n, at::Tensor& top,
                   at::Tensor& bottom) {
  const int64_t B = scores.size(0), d = scores.size(1);
  const T* s = static_cast<const T*>(scores.const_data_ptr());
  uint8_t* t = top.data_ptr<uint8_t>();
  uint8_t* bo = bottom.data_ptr<uint8_t>();
  if (d <= kUint16MaxD)
    run_cpu<T, uint16_t>(s, B, d, static_cast<uint16_t*>(ranks.data_ptr()), n, t, bo);
  else
    run_cpu<T, int32_t>(s, B, d, ranks.data_ptr<int32_t>(), n, t, bo);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rank_and_mask_cpu(const at::Tensor& scores_in,
                                                                 c10::ArrayRef<double> levels) {
  const auto n = kept_counts(scores_in, levels);
  const at::Tensor scores = scores_in.contiguous();
  auto [ranks, top, bottom] = allocate_outputs(scores, static_cast<int64_t>(n.size()));
  switch (scores.scalar_type()) {
    case at::kFloat: run_cpu_typed<float>(scores, ranks, n, top, bottom); break;
    case at::kHalf: run_cpu_typed<c10::Half>(scores, ranks, n, top, bottom); break;
    case at::kBFloat16: run_cpu_typed<c10::BFloat16>(scores, ranks, n, top, bottom); break;
    default: TORCH_CHECK(false, "unreachable");
  }
  return {ranks, top, bottom};
}

bool has_cuda() {
#ifdef FASTROAR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// How this library was built, for diagnostics and tests: "cuda: compiled" or "cuda: off (<why>)".
// setup.py passes the reason as FASTROAR_CUDA_OFF = 1 (FASTROAR_NO_CUDA set), 2 (no usable CUDA toolkit),
// 3 (torch is not a CUDA build).
std::string build_info() {
#ifdef FASTROAR_WITH_CUDA
  return "cuda: compiled";
#else
#ifndef FASTROAR_CUDA_OFF
#define FASTROAR_CUDA_OFF 0
#endif
  switch (FASTROAR_CUDA_OFF) {
    case 1: return "cuda: off (FASTROAR_NO_CUDA was set)";
    case 2: return "cuda: off (no usable CUDA toolkit)";
    case 3: return "cuda: off (torch is not a CUDA build)";
    default: return "cuda: off";
  }
#endif
}

}  // namespace
}  // namespace fastroar

TORCH_LIBRARY(fastroar, m) {
  m.def("rank_and_mask(Tensor scores, float[] levels) -> (Tensor ranks, Tensor top, Tensor bottom)");
  m.def("has_cuda() -> bool", &fastroar::has_cuda);
  m.def("build_info() -> str", &fastroar::build_info);
}

TORCH_LIBRARY_IMPL(fastroar, CPU, m) { m.impl("rank_and_mask", &fastroar::rank_and_mask_cpu); }

// `import fastroar._C` loads this library, which registers the ops above; the module itself is empty.
static struct PyModuleDef fastroar_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                               "fastroar compiled kernels; the ops live in torch.ops.fastroar",
                                               -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastroar_c_module); }
