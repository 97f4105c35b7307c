"""ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution Methods"):
a retraining-free estimate beside DiffROAR.

Removed coordinates are not zeroed but *imputed* by noisy linear interpolation from their neighbours,
and the ORIGINAL base model is evaluated on the imputed images, so no model is retrained.

Imputation (per channel plane of an (..., H, W) image; known pixels stay fixed):

- every removed pixel p equals the weighted mean of its 8 neighbours q inside the image,
  ``x_p = sum_q w_pq x_q / sum_q w_pq`` with w = 1/6 for the 4 direct and 1/12 for the 4 diagonal
  neighbours. At the image border the weights are renormalised over the neighbours that exist (the
  division by ``sum_q w_pq``); neighbours that are themselves removed are unknowns of the same system.
  This is one sparse linear system per plane (all planes of a call solved as one block-diagonal
  system with ``scipy.sparse.linalg.spsolve``). If a plane keeps at least one pixel the system is
  non-singular (every connected group of removed pixels touches a kept one);
- for narrow images (``solver="banded"``, what retrain.fill road uses on the CPU) the same system by a
  banded Cholesky solve (LAPACK's pbsv through ``scipy.linalg.solveh_banded``): numbered in C order,
  an unknown's neighbours lie within W + 1 places of it, so the matrix is a band of half-width W + 1 and
  the solve costs O(unknowns * W^2): at W = 8 about 20x faster than the sparse solve;
- on a device (``solver="torch"``, what the estimate stage uses when the device is CUDA) the same system
  is solved matrix-free by conjugate gradients in float64, all planes of a call at once: the matrix is
  symmetric (w_pq = w_qp) and, with an anchor per connected group, positive definite; each plane's
  iteration stops when its residual falls below 1e-12 of its right-hand side (equal to the sparse direct
  solve to 1e-5, tests/test_road_torch.py);
- a plane that keeps no pixel at all has no anchor: its pixels are set to 0 (DiffROAR's fill value);
- then Gaussian noise N(0, sigma^2) is added to the removed pixels only (seeded; values are not clipped).

Evaluation: for level k, "top" keeps the top-k ranked coordinates and imputes the rest (ROAD's LeRF
order: least relevant removed first), "bottom" keeps the bottom-k and imputes the rest (MoRF:
most relevant removed first). ``ROAD(k) = acc(top-k kept) - acc(bottom-k kept)``, the analogue of
DiffROAR(k) with the same masks (n = floor(k*d + 1/2) kept coordinates, same ranks).

Two rules choose the kept set (``RULES``; the rule enters a record's key only when it is not the default):

- ``"fastroar"`` (default): per coordinate of C*H*W, n = floor(k*d + 1/2) kept in both directions: the
  very masks DiffROAR retrains on, so ROAD(k) and DiffROAR(k) in one table compare the same kept sets;
- ``"reference"``: as the ROAD reference code computes it (tleemann/road_evaluation,
  ``road/imputed_dataset.py`` ``ImputedDataset`` with ``road/utils.py`` ``rescale_channel``): the
  attribution is summed over channels, pixels (all channels together) are ordered by that sum, most
  important first, and counts are truncated: keeping the top-k is its LeRF at ``th_p = k``
  (``int(H*W*k)`` pixels kept), keeping the bottom-k its MoRF at ``th_p = 1 - k``
  (``int(H*W*(1 - k))`` most important pixels removed). The reference min-max normalises the sum
  (monotone: no change of order) and adds a fixed 1e-4 * N(0, 1) map to break ties at random; here ties go
  to the lower pixel index, so the two agree wherever the normalised sums differ by more than that jitter.
  Use it to compare with numbers computed by ROAD's code.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference

# (di, dj, weight): 4 direct neighbours 1/6, 4 diagonal 1/12 (they sum to 1 in the interior).
NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
    (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12),
)
METHOD = "road-noisy-linear-v1"  # enters the record key: change it when the imputation changes
RULES = ("fastroar", "reference")  # how the kept set is chosen (module docstring); the first is the default
DEFAULT_NOISE = 0.01             # sigma as a fraction of the data's value range
MAX_UNKNOWNS_PER_SOLVE = 8192  # pixels per block-diagonal solve (measured: small solves are faster)
MAX_UNKNOWNS_PER_BAND = 1 << 18  # pixels per banded solve (its band: (W + 2) x this many float64)


class _System:
    """What both solvers set up: the linear system of the unknown (removed) pixels of (P, H, W) planes.

    `unknown` masks them, numbered in C order; `out` is a copy of x to fill. Row u of the system is
    diag[u] * x_u - sum over unknown neighbours q of w * x_q = rhs[u] (the known neighbours' weighted values);
    `couplings` holds, per neighbour direction, (u, q, w) for the unknowns u whose neighbour q is unknown."""

    def __init__(self, x: np.ndarray, keep: np.ndarray) -> None:
        P, H, W = x.shape
        self.unknown = ~keep
        self.out = x.copy()
        index = np.full(x.shape, -1, np.int64)
        self.size = int(self.unknown.sum())
        index[self.unknown] = np.arange(self.size)
        p, i, j = np.nonzero(self.unknown)
        self.diag, self.rhs = np.zeros(self.size), np.zeros(self.size)
        self.couplings: list[tuple[np.ndarray, np.ndarray, float]] = []
        for di, dj, w in NEIGHBOURS:
            ni, nj = i + di, j + dj
            u = np.flatnonzero((ni >= 0) & (ni < H) & (nj >= 0) & (nj < W))
            pp, qi, qj = p[u], ni[u], nj[u]
            self.diag[u] += w
            nb = index[pp, qi, qj]
            free = nb >= 0
            self.couplings.append((u[free], nb[free], w))
            np.add.at(self.rhs, u[~free], w * x[pp[~free], qi[~free], qj[~free]])


def _solve_planes(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Noise-free imputation of (P, H, W) float64 planes; every plane keeps >= 1 pixel."""
    import scipy.sparse as sp  # here, not at import: reading ROAD's constants (the report does) needs no SciPy
    from scipy.sparse.linalg import spsolve

    system = _System(x, keep)
    U = system.size
    if U == 0:
        return system.out
    rows = [np.arange(U)] + [u for u, _, _ in system.couplings]
    cols = [np.arange(U)] + [q for _, q, _ in system.couplings]
    vals = [system.diag] + [np.full(len(u), -w) for u, _, w in system.couplings]
    A = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(U, U))
    system.out[system.unknown] = spsolve(A, system.rhs)
    return system.out


def _solve_planes_banded(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``_solve_planes`` (same system, same unknowns) by a banded Cholesky solve; every plane keeps >= 1 pixel."""
    from scipy.linalg import solveh_banded

    system = _System(x, keep)
    if system.size == 0:
        return system.out
    band = np.zeros((x.shape[2] + 2, system.size))  # lower form: band[r, u] = A[u + r, u]
    band[0] = system.diag
    for u, q, w in system.couplings:
        lower = q > u       # each symmetric pair once, from its upper end
        band[q[lower] - u[lower], u[lower]] = -w
    system.out[system.unknown] = solveh_banded(band, system.rhs, lower=True, check_finite=False)
    return system.out


CG_RTOL = 1e-12          # per plane: stop when ||r|| <= CG_RTOL * ||b||
CG_CHECK_EVERY = 16      # iterations between convergence checks (each check is a host sync on a device)


def _stencil(u, torch_mod):
    """sum_q w_pq u_q over the in-image neighbours q of every pixel p of (P, H, W) planes (zero padding)."""
    F = torch_mod.nn.functional
    k = torch_mod.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                         dtype=u.dtype, device=u.device).view(1, 1, 3, 3)
    return F.conv2d(u.unsqueeze(1), k, padding=1).squeeze(1)


def solve_planes_torch(x, keep, max_iter: int | None = None):
    """Noise-free imputation of (P, H, W) planes (torch tensors, any device; every plane keeps >= 1
    pixel) by conjugate gradients on the system of ``_solve_planes``, in float64; returns float64."""
    import torch

    x = x.to(torch.float64)
    unknown = ~keep.to(torch.bool)
    uf = unknown.to(torch.float64)
    P, H, W = x.shape
    diag = _stencil(torch.ones_like(x), torch)               # sum of the in-image neighbours' weights
    b = _stencil(x * (1.0 - uf), torch) * uf                  # known neighbours, moved to the right side

    def apply(v):                                             # A v on the unknowns (v is 0 elsewhere)
        return (diag * v - _stencil(v, torch)) * uf

    u = torch.zeros_like(x)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum((1, 2))
    stop = (CG_RTOL * b.flatten(1).norm(dim=1)) ** 2
    limit = max_iter or max(100, 4 * H * W)
    for it in range(limit):
        ap = apply(p)
        pap = (p * ap).sum((1, 2))
        alpha = torch.where(pap > 0, rr / torch.where(pap > 0, pap, 1.0), 0.0).view(P, 1, 1)
        u = u + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum((1, 2))
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0).view(P, 1, 1)
        p = r + beta * p
        rr = rr_new
        if it % CG_CHECK_EVERY == CG_CHECK_EVERY - 1 and bool((rr <= stop).all()):
            break
    return torch.where(unknown, u, x)


def impute(x: np.ndarray, keep: np.ndarray, noise: float = 0.0,
           seed: int | Sequence[int] = 0, solver: str = "scipy", device: Any = None) -> np.ndarray:
    """x (..., H, W) with the coordinates where keep is False replaced by noisy linear imputation.

    keep has x's shape (bool); noise is the absolute standard deviation sigma added to imputed pixels
    (0 = none), drawn from ``np.random.default_rng(seed)`` in the array's flat order. Returns a new
    float array (x's dtype when floating, else float32); computed in float64. solver "scipy": sparse
    direct solves on the CPU; "banded": banded Cholesky solves on the CPU (fast for narrow images);
    "torch": conjugate gradients on `device` (default: CPU), every plane at once.
    """
    if solver not in ("scipy", "torch", "banded"):
        raise ValueError(f"solver must be 'scipy', 'banded' or 'torch', got {solver!r}")
    x = np.asarray(x)
    keep = np.asarray(keep, bool)
    if x.shape != keep.shape:
        raise ValueError(f"keep must have x's shape {x.shape}, got {keep.shape}")
    if x.ndim < 2:
        raise ValueError(f"x must be (..., H, W), got shape {x.shape}")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    H, W = x.shape[-2:]
    planes = x.reshape(-1, H, W).astype(np.float64)
    kp = keep.reshape(-1, H, W)
    anchored = kp.any(axis=(1, 2))
    out = np.zeros_like(planes)  # planes with no kept pixel stay 0
    which = np.flatnonzero(anchored)
    if solver == "torch" and len(which):
        import torch

        dev = torch.device(device or "cpu")
        solved = solve_planes_torch(torch.from_numpy(planes[which]).to(dev), torch.from_numpy(kp[which]).to(dev))
        out[which] = solved.cpu().numpy()
        which = which[:0]
    per_plane = max(1, (MAX_UNKNOWNS_PER_BAND if solver == "banded" else MAX_UNKNOWNS_PER_SOLVE) // (H * W))
    solve = _solve_planes_banded if solver == "banded" else _solve_planes
    for s in range(0, len(which), per_plane):
        sel = which[s:s + per_plane]
        out[sel] = solve(planes[sel], kp[sel])
    if noise:
        eps = np.random.default_rng(seed).standard_normal(out.shape)
        out[~kp] += float(noise) * eps[~kp]
    return out.reshape(x.shape).astype(out_dtype, copy=False)


def impute_ranked(x: np.ndarray, ranks: np.ndarray, k: float, direction: str, noise: float = 0.0,
                  seed: int | Sequence[int] = 0, solver: str = "scipy", device: Any = None) -> np.ndarray:
    """x (N, C, H, W) keeping the top-k or bottom-k coordinates of `ranks` (N, C*H*W), the rest imputed."""
    keep = keep_mask_reference(np.asarray(ranks), k, direction).reshape(x.shape)
    return impute(x, keep, noise, seed, solver, device)


def pixel_ranks(scores: np.ndarray) -> np.ndarray:
    """(N, C, H, W) attribution scores -> (N, H*W) ranks of the pixels by their channel sum (0 = most
    important; ties by lower pixel index): the reference rule's order."""
    scores = np.asarray(scores)
    return rank_reference(scores.reshape(len(scores), scores.shape[1], -1).sum(axis=1))


def reference_keep(pixel_rank: np.ndarray, k: float, direction: str) -> np.ndarray:
    """(N, H*W) pixel ranks -> (N, H*W) bool kept pixels by the reference's truncated counts: "top" keeps
    the int(P*k) most important (its LeRF at th_p = k), "bottom" removes the int(P*(1-k)) most important
    (its MoRF at th_p = 1 - k), P = H*W."""
    pixel_rank = np.asarray(pixel_rank)
    P = pixel_rank.shape[-1]
    if direction == "top":
        return pixel_rank < int(P * float(k))
    if direction == "bottom":
        return pixel_rank >= int(P * (1.0 - float(k)))
    raise ValueError(f"direction must be 'top' or 'bottom', got {direction!r}")


def impute_pixels(x: np.ndarray, pixel_rank: np.ndarray, k: float, direction: str, noise: float = 0.0,
                  seed: int | Sequence[int] = 0, solver: str = "scipy", device: Any = None) -> np.ndarray:
    """x (N, C, H, W) keeping the pixels (every channel) that the reference rule keeps, the rest imputed."""
    N, C, H, W = x.shape
    keep = reference_keep(pixel_rank, k, direction).reshape(N, 1, H, W)
    return impute(x, np.broadcast_to(keep, x.shape), noise, seed, solver, device)


def accuracy(model, x: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> float:
    """Top-1 accuracy of a torch model (eval mode, CPU) on float inputs x."""
    import torch

    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for b in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.ascontiguousarray(x[b:b + batch_size]), dtype=torch.float32)
            correct += int((model(xb).argmax(1).numpy() == labels[b:b + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


def road_levels(model, x: np.ndarray, labels: np.ndarray, ranks: np.ndarray, levels: Sequence[float],
                sigma: float, seed: int = 0, acc: Callable | None = None, solver: str = "scipy",
                device: Any = None, rule: str = "fastroar") -> list[dict[str, float]]:
    """Per level: acc on top-k-kept / bottom-k-kept imputed inputs and their difference (ROAD(k)).

    rule "fastroar": ranks are the (N, C*H*W) coordinate ranks; "reference": the (N, H*W) pixel ranks of
    :func:`pixel_ranks` (module docstring). Noise for (k, direction) is seeded by
    [seed, round(k * 1e6), 0 for top / 1 for bottom], so a level's estimate does not depend on which other
    levels are computed.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    acc = acc or accuracy
    labels = np.asarray(labels)
    imputer = impute_ranked if rule == "fastroar" else impute_pixels
    out = []
    for k in levels:
        res: dict[str, float] = {"k": float(k)}
        for code, direction in enumerate(("top", "bottom")):
            imputed = imputer(x, ranks, k, direction, sigma, seed=[int(seed), int(round(k * 1e6)), code],
                              solver=solver, device=device)
            res[f"acc_{direction}"] = float(acc(model, imputed, labels))
        res["road"] = res["acc_top"] - res["acc_bottom"]
        out.append(res)
    return out


def value_range(prepared, images: np.ndarray) -> float:
    """Span of the model inputs: the dataset's bounds, else max - min of the given inputs."""
    if prepared.bounds is not None:
        lo, hi = prepared.bounds
        return float(hi - lo)
    span = float(np.max(images) - np.min(images)) if images.size else 0.0
    return span if span > 0 else 1.0
