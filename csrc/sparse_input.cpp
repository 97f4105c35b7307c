// The first layer of the stacked MLP retrain for masked inputs, on the CPU: a retraining's input keeps
// n = floor(k d + 1/2) of its d coordinates and the rest hold one constant (the fill), so the first layer's
// product needs only the kept ones:
//
//   h1 = W1 x + b1 = sum over kept j of (x_j - fill) W1[j] + (b1 + fill * sum over all j of W1[j])
//   dL/dW1[j] = sum over the batch of x_j g = fill * (sum of g) + sum over the samples keeping j of (x_j - fill) g
//
// (weights held transposed, W1[j] the j-th input's row of H outputs). Any constant fill: for a nonzero one the
// term fill * (sum of W1's rows) is summed over all d rows each step (ATen's sum), and every row of the weight
// gradient starts from fill * (sum of g), the removed coordinates' share. Kept coordinates whose value equals the
// fill (black pixels under a zero fill) contribute nothing and are skipped too. The input gradient is not
// needed in retraining. Exact in real arithmetic; in float32 the sums run in another order than the dense
// GEMM's, so results agree with the dense layer to float rounding (exactly where every partial sum is exact,
// e.g. small integers: tests/test_sparse_input.py).
//
// - invert_ranks: order[row, r] = the coordinate of rank r (each row's ranks must be a permutation of 0..d-1,
//   which the rank kernels give: ties are broken by index). A scheme keeps the ranks [lo, hi], so a row's kept
//   coordinates are order[row, lo..hi]: no pass over the d ranks per step.
// - sparse_rows: per (model, batch row) the kept coordinates and their values minus the fill, in rank order.
// - sparse_linear / sparse_linear_wgrad_: the products. Forward, per batch row a gather of W1's kept rows
//   accumulated into its H outputs (a gathered GEMV, the sum in rank order). Weight gradient, the batch's
//   rows transposed to per-coordinate lists (a counting sort), then per coordinate a gathered GEMV over the
//   rows of g keeping it (the sum in batch order), each gradient row written once. Fixed summation orders,
//   so the bits do not depend on threads; measured faster than scattering rank-1 updates row by row (the
//   accumulators stay in registers instead of a load and a store of the gradient per product).
// - sparse_first_grads_sgd_ (the training step's): the weight gradient's rows go straight into the SGD update
//   of the weights, with stacked_mlp.cpp's sgd_update_ arithmetic, never stored.
//
// CPU only: on CUDA the stacked retrain's first layer stays the dense batched GEMM.
//
// Measured against the dense batched GEMM in tools/bench_sparse.py. Products use fused multiply-adds (one
// rounding: the AVX-512, AVX2 and portable builds below, picked by the CPU whatever ATEN_CPU_CAPABILITY says,
// give the same bits).
#include "sparse_input.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
// the vector helpers return vectors from always-inlined functions: no ABI crosses a call
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace fastroar {
namespace {

#define FR_INLINE inline __attribute__((always_inline))

constexpr int64_t kMaxTile = 128;  // outputs accumulated in registers at once: 8 vectors (AVX-512 128, AVX2 64)

void check(const at::Tensor& t, at::ScalarType dtype, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " has the wrong number of dimensions");
}

// ---- invert_ranks -----------------------------------------------------------------------------------------

template <typename R, typename O>
void invert_rows(const R* ranks, O* order, int64_t n, int64_t d) {
  at::parallel_for(0, n, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(d, 1)),
                   [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> seen(d);
    for (int64_t row = begin; row < end; ++row) {
      std::fill(seen.begin(), seen.end(), 0);
      const R* r = ranks + row * d;
      O* o = order + row * d;
      for (int64_t j = 0; j < d; ++j) {
        const int64_t v = static_cast<int64_t>(r[j]);
        TORCH_CHECK(v >= 0 && v < d && !seen[v], "invert_ranks: a row's ranks are not a permutation of 0..d-1");
        seen[v] = 1;
        o[v] = static_cast<O>(j);
      }
    }
  });
}

at::Tensor invert_ranks(const at::Tensor& ranks) {
  TORCH_CHECK(ranks.device().is_cpu() && ranks.is_contiguous() && ranks.dim() == 2,
              "ranks must be a contiguous (N, d) CPU tensor");
  const int64_t n = ranks.size(0), d = ranks.size(1);
  TORCH_CHECK(d <= std::numeric_limits<int32_t>::max(), "invert_ranks: d is too large");
  const bool narrow = d <= 65536;  // coordinates fit uint16, as the ranks do (fastroar.method.rank_dtype)
  at::Tensor order = at::empty({n, d}, ranks.options().dtype(narrow ? at::kUInt16 : at::kInt));
  switch (ranks.scalar_type()) {
#define FR_CASE(TYPE, R)                                                                             \
  case TYPE:                                                                                         \
    if (narrow) invert_rows<R, uint16_t>(ranks.data_ptr<R>(), order.data_ptr<uint16_t>(), n, d);    \
    else invert_rows<R, int32_t>(ranks.data_ptr<R>(), order.data_ptr<int32_t>(), n, d);              \
    break;
    FR_CASE(at::kUInt16, uint16_t)
    FR_CASE(at::kShort, int16_t)
    FR_CASE(at::kUInt32, uint32_t)
    FR_CASE(at::kInt, int32_t)
    FR_CASE(at::kLong, int64_t)
#undef FR_CASE
    default: TORCH_CHECK(false, "ranks must be uint16, int16, uint32, int32 or int64");
  }
  return order;
}

// ---- sparse_rows ------------------------------------------------------------------------------------------

// The inclusive rank bounds [a, b] of a model clamped to [0, d - 1]; (0, -1) when empty (n = 0: keep_bounds
// then gives lo = the dtype's max, hi = its min, whose difference overflows).
FR_INLINE void clamp_bounds(int64_t lo, int64_t hi, int64_t d, int64_t& a, int64_t& b) {
  a = std::max<int64_t>(lo, 0);
  b = std::min<int64_t>(hi, d - 1);
  if (a > b) a = 0, b = -1;
}

template <typename O>
void rows_of(const float* x, const O* order, const int64_t* idx, const int64_t* lo, const int64_t* hi,
             const float* fill, int32_t* cols, float* vals, int32_t* count, int64_t m, int64_t b, int64_t n,
             int64_t d, int64_t nmax) {
  at::parallel_for(0, m * b, std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(nmax, 1)),
                   [&](int64_t begin, int64_t end) {
    thread_local std::vector<int32_t> tc;
    thread_local std::vector<float> tv;
    tc.resize(std::max<int64_t>(nmax, 1));
    tv.resize(std::max<int64_t>(nmax, 1));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t model = t / b, row = idx[t];
      TORCH_CHECK(row >= 0 && row < n, "sparse_rows: row index out of range");
      int64_t a, z;
      clamp_bounds(lo[model], hi[model], d, a, z);
      const float f = fill[model];
      const float* xs = x + row * d;
      const O* os = order + row * d;
      int32_t* c = cols + t * nmax;
      float* v = vals + t * nmax;
      int32_t used = 0;
      // two passes: the gather of the kept values (independent loads, which the CPU overlaps), then their
      // compaction to the non-fill ones without branches (whether a pixel is lit is unpredictable)
      bool in_range = true;
      const int64_t kept = z - a + 1;
      for (int64_t r = 0; r < kept; ++r) {
        const int64_t j = static_cast<int64_t>(os[a + r]);
        in_range &= j >= 0 && j < d;
        tc[r] = static_cast<int32_t>(j);
        tv[r] = xs[in_range ? j : 0] - f;
      }
      for (int64_t r = 0; r < kept; ++r) {
        c[used] = tc[r];
        v[used] = tv[r];
        used += tv[r] != 0.0f;
      }
      TORCH_CHECK(in_range, "sparse_rows: order holds a coordinate out of range");
      count[t] = used;
    }
  });
}

}  // namespace

int64_t rows_width(const at::Tensor& lo, const at::Tensor& hi, int64_t d) {
  check(lo, at::kLong, 1, "lo");
  check(hi, at::kLong, 1, "hi");
  TORCH_CHECK(lo.numel() == hi.numel(), "lo and hi need one value per model");
  const int64_t* lp = lo.data_ptr<int64_t>();
  const int64_t* hp = hi.data_ptr<int64_t>();
  int64_t nmax = 0;
  for (int64_t i = 0; i < lo.numel(); ++i) {
    int64_t a, z;
    clamp_bounds(lp[i], hp[i], d, a, z);
    nmax = std::max<int64_t>(nmax, z - a + 1);
  }
  return nmax;
}

void sparse_rows_out(const at::Tensor& x, const at::Tensor& order, const at::Tensor& idx, const at::Tensor& lo,
                     const at::Tensor& hi, const at::Tensor& fill, at::Tensor cols, at::Tensor vals, at::Tensor count) {
  check(x, at::kFloat, 2, "x");
  check(idx, at::kLong, 2, "idx");
  check(fill, at::kFloat, 1, "fill");
  TORCH_CHECK(order.device().is_cpu() && order.is_contiguous() && order.sizes() == x.sizes(),
              "order must be a contiguous CPU tensor of x's shape (N, d)");
  const int64_t m = idx.size(0), b = idx.size(1), n = x.size(0), d = x.size(1);
  const int64_t nmax = rows_width(lo, hi, d);
  TORCH_CHECK(lo.numel() == m && fill.numel() == m, "lo, hi and fill need one value per model");
  check(cols, at::kInt, 3, "cols");
  check(vals, at::kFloat, 3, "vals");
  check(count, at::kInt, 2, "count");
  TORCH_CHECK(cols.size(0) == m && cols.size(1) == b && cols.size(2) == nmax && vals.sizes() == cols.sizes() &&
                  count.size(0) == m && count.size(1) == b, "cols, vals (M, B, nmax) and count (M, B) have the wrong shape");
  if (m * b == 0) return;
  const float* xp = x.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* lp = lo.data_ptr<int64_t>();
  const int64_t* hp = hi.data_ptr<int64_t>();
  const float* fp = fill.data_ptr<float>();
  int32_t* cp = cols.data_ptr<int32_t>();
  float* vp = vals.data_ptr<float>();
  int32_t* kp = count.data_ptr<int32_t>();
  if (order.scalar_type() == at::kUInt16) {
    rows_of<uint16_t>(xp, order.data_ptr<uint16_t>(), ip, lp, hp, fp, cp, vp, kp, m, b, n, d, nmax);
  } else {
    TORCH_CHECK(order.scalar_type() == at::kInt, "order must be uint16 or int32 (invert_ranks)");
    rows_of<int32_t>(xp, order.data_ptr<int32_t>(), ip, lp, hp, fp, cp, vp, kp, m, b, n, d, nmax);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_rows(const at::Tensor& x, const at::Tensor& order,
                                                           const at::Tensor& idx, const at::Tensor& lo,
                                                           const at::Tensor& hi, const at::Tensor& fill) {
  TORCH_CHECK(x.dim() == 2 && idx.dim() == 2, "x must be (N, d), idx (M, B)");
  const int64_t m = idx.size(0), b = idx.size(1), nmax = rows_width(lo, hi, x.size(1));
  at::Tensor cols = at::empty({m, b, nmax}, x.options().dtype(at::kInt));
  at::Tensor vals = at::empty({m, b, nmax}, x.options());
  at::Tensor count = at::empty({m, b}, x.options().dtype(at::kInt));
  sparse_rows_out(x, order, idx, lo, hi, fill, cols, vals, count);
  return {cols, vals, count};
}

// ---- the products -----------------------------------------------------------------------------------------

namespace {

// The two loops below come in three builds, picked once by the CPU: AVX-512 and AVX2 (+FMA) with the
// accumulators in vector registers, and a portable one. A vector FMA lane and std::fma round alike (once,
// exactly), so the three give the same bits; a tail narrower than a vector goes through std::fma.
//
// Forward, one output row: o[h] = (sum_i v[i] * W[c[i], h]) + bias[h], the sum in list order; a tile of
// outputs (8 vectors) held in registers while the row's entries stream by.
template <typename Vec>
FR_INLINE void gemv_row(const int32_t* cj, const float* cv, int64_t cnt, const float* W, const float* bias,
                        float* o, int64_t h) {
  constexpr int64_t L = Vec::kLanes, K = 8, kTile = K * L;
  int64_t h0 = 0;
  for (; h0 + kTile <= h; h0 += kTile) {
    typename Vec::T acc[K];
    for (int64_t u = 0; u < K; ++u) acc[u] = Vec::zero();
    for (int64_t i = 0; i < cnt; ++i) {
      const typename Vec::T v = Vec::set1(cv[i]);
      const float* wr = W + int64_t(cj[i]) * h + h0;
      for (int64_t u = 0; u < K; ++u) acc[u] = Vec::fma(v, Vec::load(wr + u * L), acc[u]);
    }
    for (int64_t u = 0; u < K; ++u) Vec::store(o + h0 + u * L, Vec::add(acc[u], Vec::load(bias + h0 + u * L)));
  }
  if (h0 < h) {  // the last, partial tile
    const int64_t width = h - h0;
    float acc[kMaxTile] = {};
    for (int64_t i = 0; i < cnt; ++i) {
      const float v = cv[i];
      const float* wr = W + int64_t(cj[i]) * h + h0;
      for (int64_t u = 0; u < width; ++u) acc[u] = std::fma(v, wr[u], acc[u]);
    }
    for (int64_t u = 0; u < width; ++u) o[h0 + u] = acc[u] + bias[h0 + u];
  }
}

struct Scalar {  // one lane: the portable build
  using T = float;
  static constexpr int64_t kLanes = 1;
  static T zero() { return 0.0f; }
  static T set1(float v) { return v; }
  static T load(const float* p) { return *p; }
  static void store(float* p, T v) { *p = v; }
  static T add(T a, T b) { return a + b; }
  static T sub(T a, T b) { return a - b; }
  static T mul(T a, T b) { return a * b; }
  static T fma(T a, T b, T c) { return std::fma(a, b, c); }
};

// torch.optim.SGD's update of one parameter row from its gradient (csrc/stacked_mlp.cpp's sgd_update_, the same
// operations in the same order, one rounding each: the same bits), applied where the gradient is computed.
struct Sgd {
  float* p;    // the weights, (d, H) of one model, and their momentum buffer
  float* buf;
  float lr, wd, mom;
  bool first;
};

template <typename Vec>
FR_INLINE typename Vec::T sgd_lanes(typename Vec::T gi, float* p, float* buf, const Sgd& s) {
  if (s.wd != 0.0f) gi = Vec::add(gi, Vec::mul(Vec::set1(s.wd), Vec::load(p)));
  if (s.mom != 0.0f) {
    const typename Vec::T bi = s.first ? gi : Vec::add(Vec::mul(Vec::set1(s.mom), Vec::load(buf)), gi);
    Vec::store(buf, bi);
    gi = Vec::add(gi, Vec::mul(Vec::set1(s.mom), bi));  // Nesterov
  }
  Vec::store(p, Vec::sub(Vec::load(p), Vec::mul(Vec::set1(s.lr), gi)));
  return gi;
}

// Weight gradient, one input row j: G[j, :] = init + sum over the batch rows keeping j (in batch order) of
// v * g[row, :], from the model's rows transposed to per-coordinate lists (rows[], vals[] of `n` entries); a
// tile of the sum in registers, each gradient row written once (rows no sample keeps get `init`). With `sgd`
// the row is not written: the SGD update of weight row j is applied from the registers instead (the gradient
// is never stored and read back: a third less memory traffic over the layer's d x H weights).
template <typename Vec>
FR_INLINE void gemv_col(const int32_t* rows, const float* vals, int64_t n, const float* g, const float* init,
                        float* G, int64_t h, const Sgd* sgd, int64_t j) {
  constexpr int64_t L = Vec::kLanes, K = 8, kTile = K * L;
  int64_t h0 = 0;
  for (; h0 + kTile <= h; h0 += kTile) {
    typename Vec::T acc[K];
    for (int64_t u = 0; u < K; ++u) acc[u] = Vec::load(init + h0 + u * L);
    for (int64_t i = 0; i < n; ++i) {
      const typename Vec::T v = Vec::set1(vals[i]);
      const float* gr = g + int64_t(rows[i]) * h + h0;
      for (int64_t u = 0; u < K; ++u) acc[u] = Vec::fma(v, Vec::load(gr + u * L), acc[u]);
    }
    if (sgd == nullptr) {
      for (int64_t u = 0; u < K; ++u) Vec::store(G + h0 + u * L, acc[u]);
    } else {
      for (int64_t u = 0; u < K; ++u) {
        const int64_t at = j * h + h0 + u * L;
        sgd_lanes<Vec>(acc[u], sgd->p + at, sgd->buf + at, *sgd);
      }
    }
  }
  if (h0 < h) {
    const int64_t width = h - h0;
    float acc[kMaxTile];
    for (int64_t u = 0; u < width; ++u) acc[u] = init[h0 + u];
    for (int64_t i = 0; i < n; ++i) {
      const float v = vals[i];
      const float* gr = g + int64_t(rows[i]) * h + h0;
      for (int64_t u = 0; u < width; ++u) acc[u] = std::fma(v, gr[u], acc[u]);
    }
    if (sgd == nullptr) {
      for (int64_t u = 0; u < width; ++u) G[h0 + u] = acc[u];
    } else {
      for (int64_t u = 0; u < width; ++u) {
        const int64_t at = j * h + h0 + u;
        sgd_lanes<Scalar>(acc[u], sgd->p + at, sgd->buf + at, *sgd);
      }
    }
  }
}

// One model's batch rows (b rows of up to nmax entries) transposed to per-coordinate lists, batch order kept
// (a counting sort): start[j] .. start[j + 1] index rows_out / vals_out.
FR_INLINE void transpose_rows(const int32_t* cols, const float* vals, const int32_t* count, int64_t b, int64_t nmax,
                              int64_t d, std::vector<int64_t>& start, std::vector<int32_t>& rows_out,
                              std::vector<float>& vals_out) {
  start.assign(d + 1, 0);
  int64_t total = 0;
  for (int64_t row = 0; row < b; ++row) {
    const int32_t* cj = cols + row * nmax;
    for (int64_t i = 0; i < count[row]; ++i) ++start[cj[i] + 1];
    total += count[row];
  }
  for (int64_t j = 0; j < d; ++j) start[j + 1] += start[j];
  rows_out.resize(total);
  vals_out.resize(total);
  std::vector<int64_t>& pos = start;  // filled in place, then shifted back
  for (int64_t row = 0; row < b; ++row) {
    const int32_t* cj = cols + row * nmax;
    const float* cv = vals + row * nmax;
    for (int64_t i = 0; i < count[row]; ++i) {
      const int64_t p = pos[cj[i]]++;
      rows_out[p] = static_cast<int32_t>(row);
      vals_out[p] = cv[i];
    }
  }
  for (int64_t j = d; j > 0; --j) start[j] = start[j - 1];
  start[0] = 0;
}


#define FR_KERNELS(SUFFIX, VEC, TARGET)                                                                          \
  TARGET void gemv_rows_##SUFFIX(const int32_t* cols, const float* vals, const int32_t* count, const float* w,    \
                                 const float* c, float* out, int64_t b, int64_t nmax, int64_t d, int64_t h,      \
                                 int64_t begin, int64_t end) {                                                   \
    for (int64_t t = begin; t < end; ++t) {                                                                      \
      const int64_t model = t / b;                                                                               \
      gemv_row<VEC>(cols + t * nmax, vals + t * nmax, count[t], w + model * d * h, c + model * h, out + t * h, h); \
    }                                                                                                            \
  }                                                                                                              \
  TARGET void wgrad_model_##SUFFIX(const int64_t* start, const int32_t* rows, const float* vals, const float* g,  \
                                   const float* init, float* G, int64_t d, int64_t h, const Sgd* sgd) {          \
    for (int64_t j = 0; j < d; ++j)                                                                              \
      gemv_col<VEC>(rows + start[j], vals + start[j], start[j + 1] - start[j], g, init, G + j * h, h, sgd, j);  \
  }
FR_KERNELS(scalar, Scalar, )

#if defined(__GNUC__) && defined(__x86_64__)
#define FR_X86_KERNELS 1
#define FR_AVX512 __attribute__((target("avx512f")))
#define FR_AVX2 __attribute__((target("avx2,fma")))
struct Avx512 {
  using T = __m512;
  static constexpr int64_t kLanes = 16;
  FR_AVX512 static T zero() { return _mm512_setzero_ps(); }
  FR_AVX512 static T set1(float v) { return _mm512_set1_ps(v); }
  FR_AVX512 static T load(const float* p) { return _mm512_loadu_ps(p); }
  FR_AVX512 static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  FR_AVX512 static T add(T a, T b) { return _mm512_add_ps(a, b); }
  FR_AVX512 static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  FR_AVX512 static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  FR_AVX512 static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
};
struct Avx2 {
  using T = __m256;
  static constexpr int64_t kLanes = 8;
  FR_AVX2 static T zero() { return _mm256_setzero_ps(); }
  FR_AVX2 static T set1(float v) { return _mm256_set1_ps(v); }
  FR_AVX2 static T load(const float* p) { return _mm256_loadu_ps(p); }
  FR_AVX2 static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  FR_AVX2 static T add(T a, T b) { return _mm256_add_ps(a, b); }
  FR_AVX2 static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  FR_AVX2 static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  FR_AVX2 static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
};
FR_KERNELS(avx512, Avx512, FR_AVX512)
FR_KERNELS(avx2, Avx2, FR_AVX2)
#endif
#undef FR_KERNELS

using GemvFn = decltype(&gemv_rows_scalar);
using WgradFn = decltype(&wgrad_model_scalar);

struct Build {
  GemvFn gemv;
  WgradFn wgrad;
  const char* name;
};

// The widest build this CPU runs (chosen once); FASTROAR_SPARSE_KERNELS=avx2|portable picks a narrower one
// (the tests check that every build gives the same bits).
const Build& build() {
  static const Build chosen = [] {
    const char* env = std::getenv("FASTROAR_SPARSE_KERNELS");
    const std::string want = env != nullptr ? env : "";
#ifdef FR_X86_KERNELS
    __builtin_cpu_init();
    if ((want.empty() || want == "avx512") && __builtin_cpu_supports("avx512f"))
      return Build{&gemv_rows_avx512, &wgrad_model_avx512, "avx512"};
    if (want != "portable" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      return Build{&gemv_rows_avx2, &wgrad_model_avx2, "avx2"};
#endif
    return Build{&gemv_rows_scalar, &wgrad_model_scalar, "portable"};
  }();
  return chosen;
}

std::string sparse_kernels() { return build().name; }

void check_rows(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count, int64_t d) {
  check(cols, at::kInt, 3, "cols");
  check(vals, at::kFloat, 3, "vals");
  check(count, at::kInt, 2, "count");
  TORCH_CHECK(vals.sizes() == cols.sizes() && count.size(0) == cols.size(0) && count.size(1) == cols.size(1),
              "cols, vals (M, B, nmax) and count (M, B) do not match");
  // the kernels index W by cols: check every used entry once here, not in the inner loops
  const int64_t nmax = cols.size(2);
  const int32_t* c = cols.data_ptr<int32_t>();
  const int32_t* k = count.data_ptr<int32_t>();
  for (int64_t t = 0; t < count.numel(); ++t) {
    TORCH_CHECK(k[t] >= 0 && k[t] <= nmax, "count out of range");
    for (int64_t i = 0; i < k[t]; ++i) TORCH_CHECK(c[t * nmax + i] >= 0 && c[t * nmax + i] < d, "cols out of range");
  }
}

}  // namespace

at::Tensor sparse_linear(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                         const at::Tensor& w, const at::Tensor& c) {
  check(w, at::kFloat, 3, "w");
  check(c, at::kFloat, 2, "c");
  const int64_t m = w.size(0), d = w.size(1), h = w.size(2);
  check_rows(cols, vals, count, d);
  TORCH_CHECK(cols.size(0) == m && c.size(0) == m && c.size(1) == h, "w (M, d, H), c (M, H) and the rows do not match");
  const int64_t b = cols.size(1), nmax = cols.size(2);
  at::Tensor out = at::empty({m, b, h}, w.options());
  const int32_t* cp = cols.data_ptr<int32_t>();
  const float* vp = vals.data_ptr<float>();
  const int32_t* kp = count.data_ptr<int32_t>();
  const float* wp = w.data_ptr<float>();
  const float* bp = c.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const GemvFn gemv = build().gemv;
  at::parallel_for(0, m * b, 1, [&](int64_t begin, int64_t end) {
    gemv(cp, vp, kp, wp, bp, op, b, nmax, d, h, begin, end);
  });
  return out;
}

namespace {

// The weight gradient of every model of the stack into grad (M, d, H), or with `sgd_p` the SGD update of the
// weights sgd_p (and momentum sgd_buf) from it, the gradient never stored.
void wgrad_impl(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count, const at::Tensor& g,
                const at::Tensor& init, at::Tensor* grad, at::Tensor* sgd_p, at::Tensor* sgd_buf, double lr,
                double weight_decay, double momentum, bool first) {
  at::Tensor& out = grad != nullptr ? *grad : *sgd_p;
  check(out, at::kFloat, 3, grad != nullptr ? "grad" : "p");
  check(g, at::kFloat, 3, "g");
  check(init, at::kFloat, 2, "init");
  const int64_t m = out.size(0), d = out.size(1), h = out.size(2);
  check_rows(cols, vals, count, d);
  const int64_t b = cols.size(1), nmax = cols.size(2);
  TORCH_CHECK(cols.size(0) == m && g.size(0) == m && g.size(1) == b && g.size(2) == h && init.size(0) == m &&
                  init.size(1) == h, "grad (M, d, H), g (M, B, H), init (M, H) and the rows do not match");
  if (sgd_buf != nullptr) {
    check(*sgd_buf, at::kFloat, 3, "buf");
    TORCH_CHECK(sgd_buf->sizes() == out.sizes(), "p and buf must have one size");
  }
  const int32_t* cp = cols.data_ptr<int32_t>();
  const float* vp = vals.data_ptr<float>();
  const int32_t* kp = count.data_ptr<int32_t>();
  const float* gp = g.data_ptr<float>();
  const float* ip = init.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* bp = sgd_buf != nullptr ? sgd_buf->data_ptr<float>() : nullptr;
  // the hyperparameters as float32, as sgd_update_ takes them
  const float lr_f = static_cast<float>(lr), wd = static_cast<float>(weight_decay), mom = static_cast<float>(momentum);
  const WgradFn wgrad = build().wgrad;
  at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {  // a model's rows all go to its own gradient
    // kept across calls: fresh buffers of this size cost page faults every step, as much as the products
    thread_local std::vector<int64_t> start;
    thread_local std::vector<int32_t> rows;
    thread_local std::vector<float> vs;
    for (int64_t model = begin; model < end; ++model) {
      transpose_rows(cp + model * b * nmax, vp + model * b * nmax, kp + model * b, b, nmax, d, start, rows, vs);
      float* o = op + model * d * h;
      const Sgd sgd{o, bp != nullptr ? bp + model * d * h : nullptr, lr_f, wd, mom, first};
      wgrad(start.data(), rows.data(), vs.data(), gp + model * b * h, ip + model * h, o, d, h,
            grad != nullptr ? nullptr : &sgd);
    }
  });
}

// every row of the weight gradient starts from fill * (sum of g): the removed coordinates' share
at::Tensor fill_share(const at::Tensor& fill, const at::Tensor& bgrad) {
  check(fill, at::kFloat, 1, "fill");
  return fill.ne(0).any().item<bool>() ? bgrad.mul(fill.unsqueeze(1)).contiguous() : at::zeros_like(bgrad);
}

}  // namespace

void sparse_linear_wgrad_(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                          const at::Tensor& g, const at::Tensor& init, at::Tensor grad) {
  wgrad_impl(cols, vals, count, g, init, &grad, nullptr, nullptr, 0.0, 0.0, 0.0, false);
}

void sparse_first_grads_sgd_(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                             const at::Tensor& fill, const at::Tensor& g, at::Tensor w, at::Tensor buf,
                             at::Tensor bgrad, double lr, double weight_decay, double momentum, bool first) {
  at::sum_out(bgrad, g, {1});
  wgrad_impl(cols, vals, count, g, fill_share(fill, bgrad), nullptr, &w, &buf, lr, weight_decay, momentum, first);
}

at::Tensor sparse_first_forward(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                                const at::Tensor& fill, const at::Tensor& wt, const at::Tensor& b) {
  check(fill, at::kFloat, 1, "fill");
  TORCH_CHECK(fill.numel() == wt.size(0), "fill needs one value per model");
  // the fill's term: fill * (sum of W1 over all its d rows), added to the bias once per step
  const bool filled = fill.ne(0).any().item<bool>();
  const at::Tensor c = filled ? b.add(wt.sum(1).mul_(fill.unsqueeze(1))) : b;
  return sparse_linear(cols, vals, count, wt, c.contiguous());
}

void sparse_first_grads(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                        const at::Tensor& fill, const at::Tensor& g, at::Tensor wgrad, at::Tensor bgrad) {
  at::sum_out(bgrad, g, {1});
  sparse_linear_wgrad_(cols, vals, count, g, fill_share(fill, bgrad), wgrad);
}

}  // namespace fastroar

TORCH_LIBRARY_FRAGMENT(fastroar, m) {
  m.def("invert_ranks(Tensor ranks) -> Tensor", &fastroar::invert_ranks);
  m.def("sparse_rows(Tensor x, Tensor order, Tensor idx, Tensor lo, Tensor hi, Tensor fill) -> (Tensor, Tensor, Tensor)",
        &fastroar::sparse_rows);
  m.def("sparse_rows_out(Tensor x, Tensor order, Tensor idx, Tensor lo, Tensor hi, Tensor fill, Tensor(a!) cols, "
        "Tensor(b!) vals, Tensor(c!) count) -> ()", &fastroar::sparse_rows_out);
  m.def("sparse_kernels() -> str", &fastroar::sparse_kernels);
  m.def("rows_width(Tensor lo, Tensor hi, int d) -> int", &fastroar::rows_width);
  m.def("sparse_linear(Tensor cols, Tensor vals, Tensor count, Tensor w, Tensor c) -> Tensor",
        &fastroar::sparse_linear);
  m.def("sparse_linear_wgrad_(Tensor cols, Tensor vals, Tensor count, Tensor g, Tensor init, Tensor(a!) grad) -> ()",
        &fastroar::sparse_linear_wgrad_);
  m.def("sparse_first_forward(Tensor cols, Tensor vals, Tensor count, Tensor fill, Tensor wt, Tensor b) -> Tensor",
        &fastroar::sparse_first_forward);
  m.def("sparse_first_grads(Tensor cols, Tensor vals, Tensor count, Tensor fill, Tensor g, Tensor(a!) wgrad, "
        "Tensor(b!) bgrad) -> ()", &fastroar::sparse_first_grads);
}
