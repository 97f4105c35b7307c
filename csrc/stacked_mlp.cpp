// Kernels of the stacked MLP retrain on the CPU (fastroar.training.batched), compiled ahead of time so a
// run never pays Numba's import and first-call cost (about 0.9 s per process, measured):
//
// - gather_masked: out[m, i, j] = x[idx[m, i], j] if lo[m] <= ranks[idx[m, i], j] <= hi[m] else fill[m],
//   the masked batch of every model of a stack in one pass;
// - sgd_update_: torch.optim.SGD's step (weight decay, Nesterov momentum) on flat float32 buffers, one
//   pass, one float32 rounding per operation. This file is compiled with -ffp-contract=off, so no
//   multiply-add is fused and every element gets the bits torch's element-wise ops give it.
//
// - stacked_step_: a whole training step of the stack, the Python step's ATen ops in the same order;
// - sparse_stacked_step_: the same step with the first layer on the kept coordinates only (sparse_input.cpp).
//
// The first two are element-wise: run serial or on at::parallel_for's threads (the caller's intra-op thread
// count, one in the stages), they give the same bits. The Numba kernels in batched.py are the fallback
// where this extension is not built, and the tests hold the two (and a torch reference) equal.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "sparse_input.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace fastroar {
namespace {

constexpr int64_t kParallelCoords = int64_t(1) << 20;  // coordinates per thread before a loop is split

// The loops below are compiled for AVX-512, AVX2 and baseline x86-64, picked at load time by the CPU (GCC's
// target_clones), as Numba compiles for the host: without it they ran 4-9x slower than the Numba kernels.
// Every clone gives the same bits: the operations are element-wise, IEEE, and never contracted (FMA).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FR_CLONES
#endif
#define FR_INLINE inline __attribute__((always_inline))

void check_cpu(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// One output row: o[j] = xs[j] if a <= rs[j] <= b else f. Compared in a type W just wider than R, with the
// bounds clamped into it (a bound outside R's range keeps or drops every value of R the same way), so the
// comparison vectorizes over R's lanes instead of widening every rank to 64 bits.
template <typename R>
FR_INLINE void gather_row(const float* __restrict__ xs, const R* __restrict__ rs, float* __restrict__ o, int64_t d,
                          int64_t a, int64_t b, float f) {
  using W = std::conditional_t<(sizeof(R) <= 2), int32_t, int64_t>;
  if constexpr (sizeof(R) < 8) {
    const int64_t below = int64_t(std::numeric_limits<R>::lowest()) - 1, above = int64_t(std::numeric_limits<R>::max()) + 1;
    a = std::min(std::max(a, below), above);
    b = std::min(std::max(b, below), above);
  }
  const W lo = static_cast<W>(a), hi = static_cast<W>(b);
  for (int64_t j = 0; j < d; ++j) {
    const W r = static_cast<W>(rs[j]);
    o[j] = (r >= lo && r <= hi) ? xs[j] : f;
  }
}

template <typename R>
FR_INLINE void gather_rows(const float* x, const R* ranks, const int64_t* idx, const int64_t* lo, const int64_t* hi,
                           const float* fill, float* out, int64_t rows_per_model, int64_t begin, int64_t end, int64_t n,
                           int64_t d) {
  for (int64_t t = begin; t < end; ++t) {
    const int64_t m = t / rows_per_model;
    const int64_t row = idx[t];
    TORCH_CHECK(row >= 0 && row < n, "gather_masked: row index out of range");
    gather_row(x + row * d, ranks + row * d, out + t * d, d, lo[m], hi[m], fill[m]);
  }
}

// target_clones takes no templates: one entry point per rank dtype
#define FR_GATHER(NAME, R)                                                                                     \
  FR_CLONES void NAME(const float* x, const R* ranks, const int64_t* idx, const int64_t* lo, const int64_t* hi, \
                      const float* fill, float* out, int64_t rows_per_model, int64_t begin, int64_t end,      \
                      int64_t n, int64_t d) {                                                                  \
    gather_rows<R>(x, ranks, idx, lo, hi, fill, out, rows_per_model, begin, end, n, d);                       \
  }
FR_GATHER(gather_u16, uint16_t)
FR_GATHER(gather_i16, int16_t)
FR_GATHER(gather_u32, uint32_t)
FR_GATHER(gather_i32, int32_t)
FR_GATHER(gather_i64, int64_t)
#undef FR_GATHER

template <typename R, typename F>
void gather_parallel(F kernel, const float* x, const R* ranks, const int64_t* idx, const int64_t* lo,
                     const int64_t* hi, const float* fill, float* out, int64_t rows_per_model, int64_t total_rows,
                     int64_t n, int64_t d) {
  const int64_t grain = std::max<int64_t>(1, kParallelCoords / std::max<int64_t>(d, 1));
  at::parallel_for(0, total_rows, grain, [&](int64_t begin, int64_t end) {
    kernel(x, ranks, idx, lo, hi, fill, out, rows_per_model, begin, end, n, d);
  });
}

void gather_masked(const at::Tensor& x, const at::Tensor& ranks, const at::Tensor& idx, const at::Tensor& lo,
                   const at::Tensor& hi, const at::Tensor& fill, at::Tensor out) {
  check_cpu(x, at::kFloat, "x");
  check_cpu(idx, at::kLong, "idx");
  check_cpu(lo, at::kLong, "lo");
  check_cpu(hi, at::kLong, "hi");
  check_cpu(fill, at::kFloat, "fill");
  check_cpu(out, at::kFloat, "out");
  TORCH_CHECK(ranks.device().is_cpu() && ranks.is_contiguous(), "ranks must be a contiguous CPU tensor");
  TORCH_CHECK(x.dim() == 2 && ranks.dim() == 2 && x.sizes() == ranks.sizes(), "x and ranks must both be (N, d)");
  TORCH_CHECK(idx.dim() == 2, "idx must be (M, B)");
  const int64_t m = idx.size(0), b = idx.size(1), n = x.size(0), d = x.size(1);
  TORCH_CHECK(lo.numel() == m && hi.numel() == m && fill.numel() == m, "lo, hi and fill need one value per model");
  TORCH_CHECK(out.dim() == 3 && out.size(0) == m && out.size(1) == b && out.size(2) == d, "out must be (M, B, d)");
  if (m * b == 0 || d == 0) return;
  const float* xp = x.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* lp = lo.data_ptr<int64_t>();
  const int64_t* hp = hi.data_ptr<int64_t>();
  const float* fp = fill.data_ptr<float>();
  float* op = out.data_ptr<float>();
  switch (ranks.scalar_type()) {  // the rank dtypes of the store and the reference, and wider
#define FR_CASE(TYPE, R, KERNEL) \
  case TYPE: gather_parallel<R>(KERNEL, xp, ranks.data_ptr<R>(), ip, lp, hp, fp, op, b, m * b, n, d); break;
    FR_CASE(at::kUInt16, uint16_t, gather_u16)
    FR_CASE(at::kShort, int16_t, gather_i16)
    FR_CASE(at::kUInt32, uint32_t, gather_u32)
    FR_CASE(at::kInt, int32_t, gather_i32)
    FR_CASE(at::kLong, int64_t, gather_i64)
#undef FR_CASE
    default: TORCH_CHECK(false, "ranks must be uint16, int16, uint32, int32 or int64");
  }
}

// kMomentum: 0 none, 1 the first step (buf := the gradient), 2 later steps (buf := momentum * buf + gradient)
template <bool kDecay, int kMomentum>
FR_INLINE void sgd_loop(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ buf, int64_t begin,
                        int64_t end, float lr, float wd, float mom) {
  for (int64_t i = begin; i < end; ++i) {
    float gi = g[i];
    if (kDecay) gi = gi + wd * p[i];
    if (kMomentum) {
      const float bi = kMomentum == 1 ? gi : mom * buf[i] + gi;
      buf[i] = bi;
      gi = gi + mom * bi;  // Nesterov
    }
    p[i] = p[i] - lr * gi;
  }
}

FR_CLONES void sgd_range(float* p, const float* g, float* buf, int64_t begin, int64_t end, float lr, float wd,
                         float mom, bool first) {
  const int kind = mom == 0.0f ? 0 : (first ? 1 : 2);
  if (wd != 0.0f) {
    if (kind == 0) sgd_loop<true, 0>(p, g, buf, begin, end, lr, wd, mom);
    else if (kind == 1) sgd_loop<true, 1>(p, g, buf, begin, end, lr, wd, mom);
    else sgd_loop<true, 2>(p, g, buf, begin, end, lr, wd, mom);
  } else {
    if (kind == 0) sgd_loop<false, 0>(p, g, buf, begin, end, lr, wd, mom);
    else if (kind == 1) sgd_loop<false, 1>(p, g, buf, begin, end, lr, wd, mom);
    else sgd_loop<false, 2>(p, g, buf, begin, end, lr, wd, mom);
  }
}

void sgd_update_(at::Tensor p, const at::Tensor& g, at::Tensor buf, double lr, double weight_decay,
                 double momentum, bool first) {
  check_cpu(p, at::kFloat, "p");
  check_cpu(g, at::kFloat, "g");
  check_cpu(buf, at::kFloat, "buf");
  TORCH_CHECK(g.numel() == p.numel() && buf.numel() == p.numel(), "p, g and buf must have one size");
  // the hyperparameters as float32, as torch's ops on float32 tensors use a Python float
  const float lr_f = static_cast<float>(lr), wd = static_cast<float>(weight_decay);
  const float mom = static_cast<float>(momentum);
  float* pp = p.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* bp = buf.data_ptr<float>();
  at::parallel_for(0, p.numel(), kParallelCoords, [&](int64_t begin, int64_t end) {
    sgd_range(pp, gp, bp, begin, end, lr_f, wd, mom, first);
  });
}

// One training step of a stack of M MLPs (weights held transposed, (M, in, out)): forward, cross-entropy with
// label smoothing, backward, and each layer's SGD update right after its gradients, with the ATen ops of
// fastroar.training.batched's Python step (StackedMLP.forward, _cross_entropy, StackedMLP.backward) called
// in the same order on the same layouts: the same kernels, so the same bits. In C++ the step runs without
// returning to the interpreter between its ~40 ops: no interpreter overhead, and the interpreter lock stays
// free for the other threads of the process (stacks train side by side on threads). Returns each model's
// mean loss over the batch and its count of correct predictions.
//
// `sparse` given (cols, vals, count, fill of csrc/sparse_input.cpp), the first layer runs on the kept
// coordinates only (x is then unused); every other op is the dense step's.
struct SparseRows {
  at::Tensor cols, vals, count, fill;
};

std::tuple<at::Tensor, at::Tensor> step_impl(std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
                                             std::vector<at::Tensor>& bufs, const at::Tensor& x,
                                             const SparseRows* sparse, const at::Tensor& y, double smoothing,
                                             double lr, double weight_decay, double momentum, bool first) {
  const int64_t layers = static_cast<int64_t>(params.size()) / 2;
  TORCH_CHECK(layers > 0 && params.size() == size_t(2 * layers) && grads.size() == params.size() &&
                  bufs.size() == params.size(), "params, grads and bufs must hold a weight and a bias per layer");
  TORCH_CHECK(y.dim() == 2 && y.scalar_type() == at::kLong, "y must be (M, B) int64");
  TORCH_CHECK(sparse != nullptr || x.dim() == 3, "x must be (M, B, d)");
  std::vector<at::Tensor> acts;  // each layer's input
  at::Tensor h = x;
  for (int64_t i = 0; i < layers; ++i) {
    acts.push_back(h);
    if (i == 0 && sparse != nullptr) {
      h = sparse_first_forward(sparse->cols, sparse->vals, sparse->count, sparse->fill, params[0], params[1]);
    } else {
      h = at::baddbmm(params[2 * i + 1].unsqueeze(1), h, params[2 * i]);
    }
    if (i < layers - 1) h.clamp_min_(0.0);
  }
  const int64_t m = h.size(0), b = h.size(1), c = h.size(2);
  at::Tensor correct = h.argmax(2).eq(y).sum(1);
  at::Tensor logp = at::log_softmax(h, -1);
  at::Tensor rows = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).neg_();
  if (smoothing != 0.0) rows = rows.mul_(1.0 - smoothing).add_(logp.mean(-1).neg_().mul_(smoothing));
  at::Tensor g = logp.exp_();
  if (smoothing != 0.0) g.sub_(smoothing / static_cast<double>(c));
  g.scatter_add_(-1, y.unsqueeze(-1), at::full({m, b, 1}, -(1.0 - smoothing), g.options()));
  at::Tensor losses = rows.mean(1);
  g.div_(b);
  for (int64_t i = layers - 1; i >= 0; --i) {
    if (i == 0 && sparse != nullptr) {  // the weights' update is applied where their gradient is computed
      sparse_first_grads_sgd_(sparse->cols, sparse->vals, sparse->count, sparse->fill, g, params[0], bufs[0],
                              grads[1], lr, weight_decay, momentum, first);
      sgd_update_(params[1], grads[1], bufs[1], lr, weight_decay, momentum, first);
      continue;  // the first layer: no input gradient
    }
    at::bmm_out(grads[2 * i], acts[i].transpose(1, 2), g);
    at::sum_out(grads[2 * i + 1], g, {1});
    if (i) {
      g = at::bmm(g, params[2 * i].transpose(1, 2));
      g = at::threshold_backward(g, acts[i], 0.0);  // ReLU: acts[i] is the previous layer's output
    }
    for (int64_t j = 2 * i; j < 2 * i + 2; ++j) sgd_update_(params[j], grads[j], bufs[j], lr, weight_decay, momentum, first);
  }
  return {losses, correct};
}

std::tuple<at::Tensor, at::Tensor> stacked_step_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                                                 std::vector<at::Tensor> bufs, const at::Tensor& x,
                                                 const at::Tensor& y, double smoothing, double lr,
                                                 double weight_decay, double momentum, bool first) {
  return step_impl(params, grads, bufs, x, nullptr, y, smoothing, lr, weight_decay, momentum, first);
}

// The step with the first layer on sparse rows (csrc/sparse_input.cpp's sparse_rows of the masked batch).
std::tuple<at::Tensor, at::Tensor> sparse_stacked_step_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                                                        std::vector<at::Tensor> bufs, const at::Tensor& cols,
                                                        const at::Tensor& vals, const at::Tensor& count,
                                                        const at::Tensor& fill, const at::Tensor& y, double smoothing,
                                                        double lr, double weight_decay, double momentum, bool first) {
  const SparseRows rows{cols, vals, count, fill};
  return step_impl(params, grads, bufs, at::Tensor(), &rows, y, smoothing, lr, weight_decay, momentum, first);
}

}  // namespace
}  // namespace fastroar

TORCH_LIBRARY_FRAGMENT(fastroar, m) {
  m.def("stacked_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] bufs, Tensor x, Tensor y, "
        "float smoothing, float lr, float weight_decay, float momentum, bool first) -> (Tensor, Tensor)",
        &fastroar::stacked_step_);
  m.def("sparse_stacked_step_(Tensor(a!)[] params, Tensor(b!)[] grads, Tensor(c!)[] bufs, Tensor cols, Tensor vals, "
        "Tensor count, Tensor fill, Tensor y, float smoothing, float lr, float weight_decay, float momentum, "
        "bool first) -> (Tensor, Tensor)", &fastroar::sparse_stacked_step_);
  m.def("gather_masked(Tensor x, Tensor ranks, Tensor idx, Tensor lo, Tensor hi, Tensor fill, Tensor(a!) out) -> ()",
        &fastroar::gather_masked);
  m.def("sgd_update_(Tensor(a!) p, Tensor g, Tensor(b!) buf, float lr, float weight_decay, float momentum, "
        "bool first) -> ()", &fastroar::sgd_update_);
}
