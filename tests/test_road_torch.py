"""ROAD's device solve: conjugate gradients in torch (run here on CPU tensors) equal the scipy sparse solve."""
from __future__ import annotations

import numpy as np
import pytest

from fastroar.metrics.road import impute, impute_ranked


@pytest.mark.parametrize("shape,keep_frac", [((4, 3, 32, 32), 0.1), ((3, 1, 16, 8), 0.5), ((2, 3, 12, 12), 0.02)])
def test_torch_solve_equals_sparse_solve(shape, keep_frac):
    rng = np.random.default_rng(5)
    x = rng.random(shape).astype(np.float32)
    keep = rng.random(shape) < keep_frac
    keep[0, 0] = False          # a plane with no anchor: 0, in both solvers
    keep[-1, -1, :, :4] = True  # a large removed region touching a kept block
    ref = impute(x, keep, noise=0.03, seed=[1, 2])
    got = impute(x, keep, noise=0.03, seed=[1, 2], solver="torch")
    assert got.dtype == ref.dtype
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert np.array_equal(got[keep], x[keep])


def test_torch_solve_through_ranks():
    rng = np.random.default_rng(1)
    x = rng.random((3, 3, 8, 8)).astype(np.float32)
    ranks = np.stack([rng.permutation(192) for _ in range(3)]).astype(np.uint16)
    for direction in ("top", "bottom"):
        np.testing.assert_allclose(impute_ranked(x, ranks, 0.3, direction, solver="torch"),
                                   impute_ranked(x, ranks, 0.3, direction), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="solver"):
        impute(x, x > 0.5, solver="cg")
