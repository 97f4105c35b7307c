"""The figures of `fastroar replicate`: margin gradients on eq. (2) data and the BlockMNIST-style
|input gradient| grid, written atomically as PNGs."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

N_GRID = 8  # test images in the BlockMNIST-style grid


def _png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_leakage(grads: dict[str, np.ndarray], signal: np.ndarray, labels: Sequence[str], names: Sequence[str],
                 signal_shares: dict[str, float], instances: int, d: int, block_dim: int, path: Path) -> None:
    """One panel per model: its signed gradients of the first `instances` test points, row-normalised, with
    the signal coordinate boxed and its mean signal-block share (`signal_shares`) in the title."""
    plt = _mpl()
    rows = min(instances, len(signal))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 0.5 + 0.28 * rows + 1.2), dpi=110)
    for ax, name, label in zip(np.atleast_1d(axes), names, labels):
        g = grads[name][:rows]
        scale = np.abs(g).max(1, keepdims=True)
        img = np.divide(g, scale, out=np.zeros_like(g), where=scale > 0)
        ax.imshow(img, cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
        r, c = np.nonzero(signal[:rows])
        ax.scatter(c, r, marker="s", s=60, facecolors="none", edgecolors="black", linewidths=1.4)
        ax.axvline(d // 2 * block_dim - 0.5, color="gray", ls="--", lw=1)
        ax.set_title(f"{label}\nsignal-block share {signal_shares[name]:.2f}", fontsize=10)
        ax.set_xlabel("coordinate (left of dashed line: task-relevant blocks)")
        ax.set_xticks(range(signal.shape[1]))
        ax.set_yticks(range(rows))
    np.atleast_1d(axes)[0].set_ylabel("test instance")
    fig.suptitle("Margin gradients on eq. (2) data (row-normalised; square = signal coordinate)", fontsize=11)
    fig.tight_layout()
    _png(fig, path)


def plot_block_grid(images: np.ndarray, signal: np.ndarray, grads: dict[str, np.ndarray], labels: np.ndarray,
                    shape: Sequence[int], path: Path) -> None:
    """The first N_GRID test images and each model's |input gradient| of them (signal block boxed)."""
    from matplotlib.patches import Rectangle

    plt = _mpl()
    C, H, W = shape
    n = min(N_GRID, len(images))
    rows = 1 + len(grads)
    fig, axes = plt.subplots(rows, n, figsize=(1.3 * n, 2.4 * rows), dpi=110, squeeze=False)
    for j in range(n):
        img = images[j].astype(np.float32)
        img = img.transpose(1, 2, 0) if C > 1 else img[0]
        sig = signal[j].reshape(C, H, W).any(0)
        ys, xs = np.nonzero(sig)
        box = (xs.min() - 0.5, ys.min() - 0.5, xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        axes[0, j].imshow(img / (img.max() or 1), cmap="gray")
        axes[0, j].set_title(f"label {labels[j]}", fontsize=8)
        for i, (name, g) in enumerate(grads.items(), start=1):
            a = g[j].reshape(C, H, W).sum(0)
            axes[i, j].imshow(a / (a.max() or 1), cmap="hot", vmin=0, vmax=1)
            if j == 0:
                axes[i, j].set_ylabel(name, fontsize=9)
        for i in range(rows):
            axes[i, j].add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="cyan", lw=1.2))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    axes[0, 0].set_ylabel("image", fontsize=9)
    fig.suptitle("|input gradient| per model (cyan box: signal block)", fontsize=10)
    fig.tight_layout()
    _png(fig, path)
