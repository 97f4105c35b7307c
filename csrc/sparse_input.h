// The first layer of the stacked MLP retrain for masked inputs (csrc/sparse_input.cpp), shared with the
// training step of csrc/stacked_mlp.cpp.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace fastroar {

// Each (model m, batch row b)'s kept coordinates whose value differs from the fill, in rank order:
// cols (M, B, nmax) int32, vals (M, B, nmax) float32 = x - fill[m], count (M, B) int32 entries used.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_rows(const at::Tensor& x, const at::Tensor& order,
                                                           const at::Tensor& idx, const at::Tensor& lo,
                                                           const at::Tensor& hi, const at::Tensor& fill);

// out[m, b, :] = (sum over the row's entries i of vals[m, b, i] * w[m, cols[m, b, i], :]) + c[m, :]
at::Tensor sparse_linear(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                         const at::Tensor& w, const at::Tensor& c);

// grad[m, j, :] = init[m, :] + sum over the batch rows b keeping j (b ascending) of vals * g[m, b, :]
void sparse_linear_wgrad_(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                          const at::Tensor& g, const at::Tensor& init, at::Tensor grad);

// The first layer's forward of a stack on sparse rows, with the constant fill's term: (M, B, H)
at::Tensor sparse_first_forward(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                                const at::Tensor& fill, const at::Tensor& wt, const at::Tensor& b);

// The first layer's gradients: bias grad = sum of g over the batch, weight grad = fill * bias grad on every
// row plus the sparse rows' products.
void sparse_first_grads(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                        const at::Tensor& fill, const at::Tensor& g, at::Tensor wgrad, at::Tensor bgrad);

// sparse_first_grads with the weights' SGD step (stacked_mlp.cpp's sgd_update_, the same bits) applied as each
// weight row's gradient is computed, the gradient never stored: the bias gradient into bgrad, w and buf updated.
void sparse_first_grads_sgd_(const at::Tensor& cols, const at::Tensor& vals, const at::Tensor& count,
                             const at::Tensor& fill, const at::Tensor& g, at::Tensor w, at::Tensor buf,
                             at::Tensor bgrad, double lr, double weight_decay, double momentum, bool first);

}  // namespace fastroar
