"""Input-gradient attribution against closed-form gradients and a hand-written autograd reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastroar
from fastroar.attribution import attribute, random_scores


def test_linear_model_gradient_is_the_predicted_class_weight_row():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    x = torch.randn(7, 1, 3, 4)
    scores = fastroar.attribute(model, x, method="gradient")
    w = model[1].weight.detach()
    pred = model(x).argmax(1)
    expected = w[pred].abs().reshape(7, 1, 3, 4)  # d logit_y / dx = W[y] for a linear model
    torch.testing.assert_close(scores, expected, rtol=0, atol=0)


def test_mlp_gradient_matches_closed_form_backprop():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(9, 1, 10, 1, dtype=torch.float64)
    model = model.double()
    scores = attribute(model, x, "gradient").reshape(9, -1).numpy()
    W1, b1 = model[1].weight.detach().numpy(), model[1].bias.detach().numpy()
    W2, b2 = model[3].weight.detach().numpy(), model[3].bias.detach().numpy()
    W3, b3 = model[5].weight.detach().numpy(), model[5].bias.detach().numpy()
    for i, xi in enumerate(x.reshape(9, -1).numpy()):
        h1 = W1 @ xi + b1
        h2 = W2 @ np.maximum(h1, 0) + b2
        logits = W3 @ np.maximum(h2, 0) + b3
        y = int(np.argmax(logits))
        grad = ((W3[y] * (h2 > 0)) @ W2 * (h1 > 0)) @ W1
        np.testing.assert_allclose(scores[i], np.abs(grad), rtol=1e-10, atol=1e-12)


def test_gradient_of_a_sample_does_not_depend_on_its_batch():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(6, 1, 2, 4, dtype=torch.float64)
    whole = attribute(model, x)
    single = torch.cat([attribute(model, x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(whole, single)


def test_attribution_restores_training_mode_and_leaves_no_grad_on_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).train()
    x = torch.randn(3, 1, 2, 2)
    attribute(model, x)
    assert model.training and x.grad is None and not x.requires_grad


def test_random_scores_depend_on_seed_and_index_only():
    x = torch.zeros(5, 1, 4, 4)
    a = random_scores(None, x, seed=3, indices=range(10, 15))
    b = random_scores(None, torch.ones(2, 1, 4, 4), seed=3, indices=[12, 13])
    torch.testing.assert_close(a[2:4], b)  # same (seed, index) -> same scores, whatever the input or batch
    assert not torch.equal(a, random_scores(None, x, seed=4, indices=range(10, 15)))


def test_unknown_attribution_is_a_clear_error():
    from fastroar.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown attribution 'saliency'.*gradient"):
        attribute(nn.Linear(2, 2), torch.zeros(1, 2), "saliency")


def test_edge_attribution_is_kornia_sobel_and_matches_scipy_sobel_magnitude():
    import kornia
    from scipy import ndimage

    x = torch.rand(3, 2, 9, 7)
    scores = attribute(None, x, "edge")
    torch.testing.assert_close(scores, kornia.filters.sobel(x))  # the library call it wraps
    # independent reference: scipy's Sobel (border replicated), kernel sum normalised to 1/8
    for b in range(3):
        for c in range(2):
            img = x[b, c].numpy().astype(np.float64)  # 2-D: scipy smooths along every other axis
            gx = ndimage.sobel(img, axis=1, mode="nearest") / 8
            gy = ndimage.sobel(img, axis=0, mode="nearest") / 8
            np.testing.assert_allclose(scores[b, c].numpy(), np.sqrt(gx**2 + gy**2 + 1e-6), rtol=1e-5, atol=1e-6)


def test_captum_integrated_gradients_on_a_linear_model_is_x_times_weight_row():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 3)).double()
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    scores = attribute(model, x, "captum:IntegratedGradients", n_steps=8)
    pred = model(x).argmax(1)
    w = model[1].weight.detach()[pred].reshape(4, 1, 2, 3)
    torch.testing.assert_close(scores, (x * w).abs())  # IG with zero baseline, exact for linear models


def test_captum_paths_equal_direct_captum_calls():
    from captum.attr import NoiseTunnel, Saliency

    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 1, 2, 4)
    target = model(x).argmax(1)
    torch.testing.assert_close(attribute(model, x, "captum:Saliency"),
                               Saliency(model).attribute(x, target=target).abs())
    torch.testing.assert_close(attribute(model, x, "captum:Saliency"), attribute(model, x, "gradient"))
    torch.manual_seed(5)
    ours = attribute(model, x, "captum:NoiseTunnel(Saliency)", nt_samples=4, stdevs=0.1)
    torch.manual_seed(5)
    direct = NoiseTunnel(Saliency(model)).attribute(x, target=target, nt_samples=4, stdevs=0.1).abs()
    torch.testing.assert_close(ours, direct)


@pytest.mark.parametrize("name", ["captum:NoSuchMethod", "captum:NoiseTunnel(Nope)", "captum:", "edges"])
def test_bad_attribution_names(name):
    from fastroar.errors import ConfigError

    with pytest.raises(ConfigError):
        attribute(nn.Linear(2, 2), torch.zeros(1, 2), name)


# ---- gradient variants against the closed forms of a linear model z = W x + b

def _linear(seed: int, d: int = 12, c: int = 4):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c)).double()
    x = torch.randn(9, 1, 3, d // 3, dtype=torch.float64)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    return model, x, W, b, x.reshape(9, -1) @ W.T + b


def test_margin_gradient_of_a_linear_model_is_a_difference_of_weight_rows():
    model, x, W, _, z = _linear(3)
    yhat = z.argmax(1)
    runner = z.clone()
    runner[torch.arange(9), yhat] = -torch.inf
    second = runner.argmax(1)                          # max over c != yhat
    want = (W[yhat] - W[second]).abs().reshape(x.shape)
    torch.testing.assert_close(attribute(model, x, "gradient:margin"), want, rtol=0, atol=1e-12)


def test_two_class_margin_gradient_is_the_single_logit_of_the_theory():
    model, x, W, _, z = _linear(4, c=2)
    want = (W[1] - W[0]).abs().expand(9, -1).reshape(x.shape)  # the same for every instance
    torch.testing.assert_close(attribute(model, x, "gradient:margin"), want, rtol=0, atol=1e-12)


def test_loss_gradient_uses_the_true_label_and_equals_W_T_softmax_minus_onehot():
    model, x, W, _, z = _linear(5)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    p = torch.softmax(z, 1)
    want = ((p - nn.functional.one_hot(y, 4).double()) @ W).abs().reshape(x.shape)
    torch.testing.assert_close(attribute(model, x, "gradient:loss", labels=y), want, rtol=1e-10, atol=1e-14)
    # via the precompute path (labels passed like the indices)
    from fastroar.stages.precompute import rank_batch

    ranks, *_ , scores = rank_batch(model, x, "gradient:loss", {}, range(9), [0.5], labels=y)
    torch.testing.assert_close(scores, want.reshape(9, -1))
    from fastroar.errors import ConfigError

    with pytest.raises(ConfigError, match="needs the true labels"):
        attribute(model, x, "gradient:loss")


def test_signed_gradient_is_the_predicted_row_without_abs_and_gradient_keeps_its_abs():
    model, x, W, _, z = _linear(6)
    want = W[z.argmax(1)].reshape(x.shape)
    torch.testing.assert_close(attribute(model, x, "gradient:signed"), want, rtol=0, atol=0)
    torch.testing.assert_close(attribute(model, x, "gradient"), want.abs(), rtol=0, atol=0)
    # other methods take (and ignore) labels: random is unchanged by them
    torch.testing.assert_close(attribute(None, x, "random", seed=1, indices=range(9), labels=torch.zeros(9)),
                               random_scores(None, x, seed=1, indices=range(9)))


def test_new_gradient_names_leave_existing_store_identities_alone():
    from fastroar.config import validate
    from fastroar.stages.artifacts import attribution_params

    cfg = validate({"dataset": {"name": "blockdigits"}, "model": {"arch": "mlp2"}})   # no attribution_params
    assert attribution_params(cfg, "gradient") == {} and attribution_params(cfg, "random") == {"seed": 0}
    assert attribution_params(cfg, "gradient:margin") == {}
