#!/usr/bin/env python
"""fastroar throughput benchmarks: every figure is a ratio against a baseline timed in the same run.

Absolute throughputs are printed for context only; machines here are noisy, so compare ratios.
Sections live in tools/bench_*.py; each exposes ``rows(quick: bool) -> list[Row]``.

    python tools/bench.py            # full mode (the README quotes this)
    python tools/bench.py --quick    # under 2 minutes on a 2-core CPU machine
    python tools/bench.py --only e2e # `fastroar run` against a plain PyTorch pipeline (minutes; not in the default set)
    python tools/bench.py --only memory_format   # conv training steps on one thread: NCHW vs channels_last
    python tools/bench.py --only realdata --data-root ROOT   # the BlockMNIST CPU profile on real MNIST (hours;
                                     # --quick: a reduced study on the same data); without data: "skipped: no data"
    python tools/bench.py --sweep cifar10|imagenet10 [sweep options]   # tools/sweep.py: timed end-to-end run
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass

SECTIONS = ["bench_kernels", "bench_loaders", "bench_training", "bench_memory_format", "bench_sparse", "bench_collapse",
            "bench_realdata"]


@dataclass
class Row:
    section: str          # e.g. "rank+mask d=3072"
    name: str             # what was measured, e.g. "fastroar._C cpu"
    throughput: float     # in `unit`
    unit: str             # e.g. "img/s"
    baseline: str         # name of the row it is compared with (same section)
    ratio: float          # throughput / baseline throughput
    extra: str = ""       # context, e.g. "1.2 GB/s scores read"


def best_time(fn, repeat: int = 3, min_time: float = 0.2) -> float:
    """Best-of-`repeat` seconds per call of fn, each repeat running long enough to be measurable."""
    fn()  # warm-up (JIT, caches, allocator)
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best


def _figure(value: float) -> str:
    """Three significant digits below 100 (a run of 15.7 s is not 16 s), whole numbers above."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def print_table(rows: list[Row]) -> None:
    header = ("section", "measured", "throughput", "baseline", "ratio", "context")
    lines = [header] + [
        (r.section, r.name, f"{_figure(r.throughput)} {r.unit}" if r.unit else "-", r.baseline,
         f"{r.ratio:.2f}x" if r.ratio == r.ratio else "-", r.extra) for r in rows
    ]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    print(fmt.format(*header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        print(fmt.format(*line))


def main() -> int:
    if "--sweep" in sys.argv[1:]:   # measured end-to-end sweeps live in tools/sweep.py
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import sweep

        argv = sys.argv[1:]
        i = argv.index("--sweep")
        return sweep.main(argv[:i] + argv[i + 1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (< 2 minutes)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections, e.g. bench_kernels")
    ap.add_argument("--data-root", default=None,
                    help="real MNIST in torchvision's layout (ROOT/MNIST/raw) for the realdata section")
    args = ap.parse_args()
    if args.data_root:
        os.environ["FASTROAR_BENCH_DATA_ROOT"] = os.path.abspath(args.data_root)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    rows: list[Row] = []
    for section in args.only or SECTIONS:
        section = section if section.startswith("bench_") else f"bench_{section}"
        try:
            mod = importlib.import_module(section)
        except ModuleNotFoundError as e:
            if e.name == section:
                continue
            raise
        t0 = time.perf_counter()
        rows.extend(mod.rows(args.quick))
        print(f"[bench] {section} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
