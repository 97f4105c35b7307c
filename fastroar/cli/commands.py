"""The `fastroar` command line: each command parses options, calls one stage, and reports. Stages and
their heavy imports (torch, FFCV, Ray) are loaded inside the command that needs them."""
from __future__ import annotations

import functools
import time
from pathlib import Path

import click

from fastroar.cli.options import (
    CHECKPOINT_OPTION,
    FILL_OPTION,
    RECIPE_OPTION,
    VERBOSE_OPTION,
    common_options,
    context,
    executor_options,
    fail_cleanly,
    finite_positive,
    parse_levels,
    scores_option,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fastroar", message="%(prog)s %(version)s")
def cli() -> None:
    """fastroar: DiffROAR evaluation of feature attributions (Shah, Jain & Netrapalli, NeurIPS 2021).

    Stages: prepare -> train -> precompute -> retrain -> report; `run` does them all.
    Everything goes to --workdir; each stage skips work that is already complete.
    """


@cli.command()
@common_options
@fail_cleanly
def prepare(workdir, dataset, config_path, overrides, device, loader, progress) -> None:
    """Build the dataset and write its splits as FFCV .beton files."""
    from fastroar.stages.prepare import prepare as prepare_stage

    prepare_stage(context(workdir, dataset, config_path, overrides, device, loader, progress, create=True))


@cli.command()
@common_options
@CHECKPOINT_OPTION
@fail_cleanly
def train(workdir, dataset, config_path, overrides, device, loader, progress, checkpoints) -> None:
    """Train the config's base models (standard and PGD-robust); register --checkpoint models instead."""
    from fastroar.stages.train import train as train_stage

    train_stage(context(workdir, dataset, config_path, overrides, device, loader, progress,
                        checkpoints=checkpoints))


@cli.command()
@common_options
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@scores_option
@executor_options
@fail_cleanly
def precompute(workdir, dataset, config_path, overrides, device, loader, progress, models, attributions,
               executor) -> None:
    """Attribute every image, rank its coordinates and store rank maps and masks (Zarr)."""
    from fastroar.stages.precompute import precompute as precompute_stage

    ctx = context(workdir, dataset, config_path, overrides, device, loader, progress)
    t0 = time.perf_counter()
    n = precompute_stage(ctx, models=models or None, attributions=attributions or None,
                         executor=executor())
    click.echo(f"[precompute] {n} chunks computed in {time.perf_counter() - t0:.1f}s")


@cli.command()
@common_options
@click.option("--k", "levels", multiple=True, callback=parse_levels,
              help="Level(s) k in (0, 1): fraction of coordinates kept (repeatable or comma-separated). Levels "
                   "and seeds beyond the config's are recorded under the config's other settings, and `report` "
                   "includes them as they are.")
@click.option("--direction", type=click.Choice(["top", "bottom", "both"]), default="both", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1, max=1000), default=None,
              help="Runs per (level, direction), at most 1000  [default: the config's retrain.seeds]; `report` "
                   "includes the extra seeds.")
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@FILL_OPTION
@RECIPE_OPTION
@VERBOSE_OPTION
@executor_options
@fail_cleanly
def retrain(workdir, dataset, config_path, overrides, device, loader, progress, levels, direction, seeds,
            models, attributions, verbose, executor) -> None:
    """Retrain fresh models on top-k / bottom-k unmasked data; one result record per job."""
    from fastroar.stages.retrain import retrain as retrain_stage

    ctx = context(workdir, dataset, config_path, overrides, device, loader, progress, verbose=verbose)
    directions = ["top", "bottom"] if direction == "both" else [direction]
    retrain_stage(ctx, executor=executor(),
                  models=models or None, attributions=attributions or None, levels=levels, directions=directions,
                  n_seeds=seeds)


@cli.command()
@common_options
@FILL_OPTION
@RECIPE_OPTION
@fail_cleanly
def report(workdir, dataset, config_path, overrides, device, loader, progress) -> None:
    """Print the DiffROAR table, write it as CSV and plot the curves (PNG)."""
    from fastroar.stages.report import report as report_stage

    report_stage(context(workdir, dataset, config_path, overrides, device, loader, progress))


@cli.command()
@common_options
@click.option("--k", "levels", multiple=True, callback=parse_levels,
              help="Level(s) k in (0, 1) (repeatable or comma-separated). Default: the config's levels.")
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@click.option("--noise", type=float, default=0.01, show_default=True, callback=finite_positive,
              help="Std of the noise added to imputed pixels, as a fraction of the inputs' value range (> 0).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the imputation noise (>= 0).")
@click.option("--rule", type=click.Choice(["fastroar", "reference"]), default="fastroar", show_default=True,
              help="Kept set: fastroar = DiffROAR's masks (per coordinate, n = floor(k*d + 1/2)); reference = "
                   "ROAD's code (pixels ranked by the attribution summed over channels, counts truncated).")
@fail_cleanly
def estimate(workdir, dataset, config_path, overrides, device, loader, progress, levels, models, attributions,
             noise, seed, rule) -> None:
    """ROAD estimate without retraining: impute removed pixels (noisy linear), evaluate the base model."""
    from fastroar.stages.estimate import estimate as estimate_stage
    from fastroar.stages.report import format_table

    ctx = context(workdir, dataset, config_path, overrides, device, loader, progress)
    t0 = time.perf_counter()
    records = estimate_stage(ctx, models=models or None, attributions=attributions or None, levels=levels,
                             noise=noise, seed=seed, rule=rule)

    click.echo("ROAD (acc(top-k kept, rest imputed) - acc(bottom-k kept, rest imputed); original model"
               + ("; the ROAD reference's rule: pixels by channel sum, counts truncated)" if rule == "reference"
                  else ")"))
    click.echo(format_table(records, ("model", "attribution", "k", "acc_top", "acc_bottom", "road")))
    click.echo(f"[estimate] done in {time.perf_counter() - t0:.1f}s")


@cli.command(short_help="Reproduce the paper's findings (leakage, BlockMNIST, DiffROAR).")
@functools.partial(common_options, data_root=False)
@click.option("--quick", is_flag=True, help="Tiny settings (seconds; for tests), not for conclusions.")
@click.option("--instances", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows (test instances) in the leakage gradient figure.")
@click.option("--data-root", type=click.Path(file_okay=False), default=None,
              help="Where real MNIST / Fashion-MNIST are (ROOT/MNIST/raw, ROOT/FashionMNIST/raw; Fashion-MNIST also "
                   "from Debian's dataset-fashion-mnist): adds the real-data claims (BlockMNIST, BlockMNIST-Top, "
                   "Fashion-MNIST) on the CPU profiles; also the workdir's dataset root when it reads from disk.")
@click.option("--real-set", "real_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value of the real-data profiles (blockmnist-cpu, fashion-mnist-cpu), e.g. "
                   "--real-set train.epochs=1 (repeatable).")
@click.option("--reference", is_flag=True,
              help="The AQ experiment runs the reference notebook's exact recipe (configs/leakage-reference.yaml) "
                   "and reports its wall time.")
@fail_cleanly
def replicate(workdir, dataset, config_path, overrides, device, loader, progress, quick, instances, data_root,
              real_overrides, reference) -> None:
    """Reproduce the paper's findings into <workdir>/replicate/: feature leakage (Fig 5, Theorem 1), BlockMNIST-style
    gradients, DiffROAR standard vs robust; with --data-root, on real BlockMNIST and Fashion-MNIST too."""
    from fastroar.stages.contract import resolve_config
    from fastroar.stages.replicate import replicate as replicate_stage
    from fastroar.stages.replicate.real_data import reads_from_disk

    t0 = time.perf_counter()
    if data_root and reads_from_disk(resolve_config(workdir, dataset=dataset, config_path=config_path,
                                                    overrides=overrides).dataset.name):
        overrides = (*overrides, f"dataset.params.root={str(Path(data_root).expanduser().resolve())!r}")
    ctx = context(workdir, dataset, config_path, overrides, device, loader, progress, create=True)
    summary = replicate_stage(ctx, quick=quick, instances=instances, data_root=data_root,
                              real_overrides=real_overrides, reference=reference)
    click.echo(f"[replicate] done in {time.perf_counter() - t0:.1f}s; see {summary.out_dir}/summary.md")


@cli.command()
@common_options
@FILL_OPTION
@RECIPE_OPTION
@CHECKPOINT_OPTION
@scores_option
@VERBOSE_OPTION
@fail_cleanly
def run(workdir, dataset, config_path, overrides, device, loader, progress, checkpoints, verbose) -> None:
    """prepare -> train -> precompute -> retrain -> report for one config (finished stages are skipped)."""
    from fastroar.stages.run import run as run_stage

    t0 = time.perf_counter()
    ctx = context(workdir, dataset, config_path, overrides, device, loader, progress, create=True,
                  checkpoints=checkpoints, verbose=verbose)
    run_stage(ctx)
    if verbose:
        click.echo("[run] stage wall times: " + ", ".join(f"{name} {sec:.2f}s" for name, sec in ctx.timings.items()
                                                         if name != "run"))
    click.echo(f"[run] done in {time.perf_counter() - t0:.1f}s; everything is in {ctx.wd.root}")


def main() -> None:
    cli(prog_name="fastroar")


if __name__ == "__main__":
    main()
