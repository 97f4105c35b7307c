// The base models' training steps for MLPs (Flatten, [Linear, ReLU]*, Linear) on the CPU, in C++: what
// autograd runs for fastroar.training.loop.train_model and fastroar.training.pgd.pgd_attack, written out.
//
// Autograd's backward of these layers is a fixed sequence of ATen ops (derivatives.yaml): the loss's
// nll_loss_backward and _log_softmax_backward_data, then per Linear (addmm(b, h, W^t)) the input gradient
// mm(g, W), the weight gradient mm(g^t, h) and the bias gradient sum over the batch, per ReLU
// threshold_backward(g, relu(h), 0). Calling the same ops on the same layouts gives the same bits
// (tests/test_mlp_train.py holds them equal to autograd's, and tests/test_format_compat.py to the model
// hashes of fastroar 0.1.0). Without the interpreter and the autograd engine between ops, a PGD-trained
// model's step costs about half its time (robust training is mostly small ops at batch 64), and the
// interpreter lock stays free for the retrain stacks training beside it on other threads.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace fastroar {
namespace {

// Forward through the MLP on flat input x (B, d); params = [W1, b1, W2, b2, ...] as nn.Linear holds them
// (out, in). outs[i] is layer i's input (relu output for i > 0); returns the logits.
at::Tensor mlp_forward(const at::Tensor& x, const std::vector<at::Tensor>& params, std::vector<at::Tensor>& outs) {
  const size_t layers = params.size() / 2;
  at::Tensor h = x;
  for (size_t i = 0; i < layers; ++i) {
    outs.push_back(h);
    h = at::addmm(params[2 * i + 1], h, params[2 * i].t());  // F.linear on 2-D input with a bias
    if (i + 1 < layers) h = at::relu(h);
  }
  return h;
}

// d mean-cross-entropy / d logits, as autograd seeds and runs it (label smoothing 0, no class weights).
std::tuple<at::Tensor, at::Tensor> cross_entropy_grad(const at::Tensor& logits, const at::Tensor& y) {
  at::Tensor logp = at::log_softmax(logits, 1, logits.scalar_type());
  auto [loss, total_weight] = at::nll_loss_forward(logp, y, {}, at::Reduction::Mean, -100);
  at::Tensor g = at::nll_loss_backward(at::ones_like(loss), logp, y, {}, at::Reduction::Mean, -100, total_weight);
  g = at::_log_softmax_backward_data(g, logp, 1, logits.scalar_type());
  return {loss, g};
}

void check_mlp(const std::vector<at::Tensor>& params, const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(!params.empty() && params.size() % 2 == 0, "params must hold a weight and a bias per layer");
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, "x must be a float32 CPU tensor");
  TORCH_CHECK(y.dim() == 1 && y.scalar_type() == at::kLong && y.size(0) == x.size(0), "y must be (B,) int64");
}

// Gradient of the mean cross-entropy wrt the input (B, ...) (the PGD attack's autograd.grad).
at::Tensor input_grad(const at::Tensor& input, const at::Tensor& y, const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> outs;
  at::Tensor logits = mlp_forward(input.reshape({input.size(0), -1}), params, outs);
  at::Tensor g = std::get<1>(cross_entropy_grad(logits, y));
  for (size_t i = params.size() / 2; i-- > 0;) {
    g = at::mm(g, params[2 * i]);
    if (i) g = at::threshold_backward(g, outs[i], 0);
  }
  return g.view(input.sizes());
}

at::Tensor per_sample_norm(const at::Tensor& t) {  // pgd._per_sample_norm
  std::vector<int64_t> shape(t.dim(), 1);
  shape[0] = -1;
  return at::linalg_vector_norm(t.flatten(1), 2, at::IntArrayRef{1}).clamp_min(1e-12).view(shape);
}

at::Tensor project(const at::Tensor& delta, bool l2, double eps) {  // pgd.project
  if (!l2) return delta.clamp(-eps, eps);
  // eps / norm in Python is Tensor.__rtruediv__: reciprocal, then a product
  return delta * at::reciprocal(per_sample_norm(delta)).mul(eps).clamp(c10::nullopt, 1.0);
}

// pgd_attack's steps from a start delta: ascend the loss, project, clip to the data bounds; returns x + delta.
at::Tensor mlp_pgd(const at::Tensor& x, at::Tensor delta, const at::Tensor& y, std::vector<at::Tensor> params,
                   const std::string& norm, double eps, double alpha, int64_t steps, c10::optional<double> lo,
                   c10::optional<double> hi) {
  check_mlp(params, x, y);
  TORCH_CHECK(norm == "l2" || norm == "linf", "norm must be l2 or linf");
  at::NoGradGuard no_grad;  // the parameters require grad: record no graph of the ops below
  const bool l2 = norm == "l2";
  for (int64_t s = 0; s < steps; ++s) {
    at::Tensor grad = input_grad(x + delta, y, params);
    at::Tensor step = l2 ? grad.mul(alpha).div(per_sample_norm(grad)) : grad.sign().mul(alpha);
    delta = project(delta + step, l2, eps);
    if (lo.has_value()) delta = (x + delta).clamp(*lo, *hi) - x;
  }
  return x + delta;
}

// One training step's forward and backward: (mean loss, correct predictions, gradients of params in order).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> mlp_grads(const at::Tensor& x, const at::Tensor& y,
                                                                      std::vector<at::Tensor> params) {
  check_mlp(params, x, y);
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> outs;
  at::Tensor logits = mlp_forward(x.reshape({x.size(0), -1}), params, outs);
  auto [loss, g] = cross_entropy_grad(logits, y);
  at::Tensor correct = logits.argmax(1).eq(y).sum();
  std::vector<at::Tensor> grads(params.size());
  for (size_t i = params.size() / 2; i-- > 0;) {
    grads[2 * i + 1] = at::sum(g, {0}, true).view(params[2 * i + 1].sizes());  // autograd's sum_to
    grads[2 * i] = at::mm(g.t(), outs[i]);
    if (i) g = at::threshold_backward(at::mm(g, params[2 * i]), outs[i], 0);
  }
  return {loss, correct, grads};
}

}  // namespace
}  // namespace fastroar

TORCH_LIBRARY_FRAGMENT(fastroar, m) {
  m.def("mlp_pgd(Tensor x, Tensor delta, Tensor y, Tensor[] params, str norm, float eps, float alpha, int steps, "
        "float? lo, float? hi) -> Tensor", &fastroar::mlp_pgd);
  m.def("mlp_grads(Tensor x, Tensor y, Tensor[] params) -> (Tensor, Tensor, Tensor[])", &fastroar::mlp_grads);
}
