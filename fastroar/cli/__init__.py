"""The `fastroar` command line: each command parses options, calls one stage function, and reports.

Errors a user can cause end in one message naming the fix and exit code 2, without a traceback.
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from fastroar.errors import FastroarError

DEFAULT_WORKDIR = "fastroar-work"


def fail_cleanly(fn: Callable) -> Callable:
    """Turns user-caused errors and Ctrl-C into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FastroarError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # the machine refused (permissions, disk full, ...): say what and where
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"Error: {e.strerror or e}{where}; check that the path is writable and has space, "
                       "then rerun the same command (finished work is kept)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("\nInterrupted: finished work is kept; rerun the same command to resume.", err=True)
            sys.exit(130)

    return wrapper


def common_options(fn: Callable) -> Callable:
    """Options every stage takes: where to work and which config, with overrides."""
    options = [
        click.option("--workdir", "-w", default=DEFAULT_WORKDIR, show_default=True, type=click.Path(),
                     help="Directory where every stage reads and writes."),
        click.option("--dataset", "-d", default=None,
                     help="Dataset (selects configs/<dataset>.yaml). Default: the workdir's config, else blockdigits."),
        click.option("--config", "config_path", default=None, type=click.Path(),
                     help="A YAML config file instead of configs/<dataset>.yaml."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="Override a config value, e.g. --set train.epochs=5 (repeatable)."),
        click.option("--device", default=None, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where models train and attributions run (config default: auto)."),
        click.option("--loader", default=None, type=click.Choice(["auto", "ffcv", "resident"]),
                     help="Data path: FFCV streaming, device-resident, or auto (resident when it fits)."),
        click.option("--progress/--no-progress", default=True, help="Show progress bars."),
    ]
    for option in reversed(options + DATA_OPTIONS):
        fn = option(fn)
    return fn


def config_option(*decls: str, key: str, to_yaml: Callable[[Any], str] = str, **click_kwargs: Any) -> Callable:
    """A click option that is a shorthand for `--set key=value`: when given, its value (written as YAML by
    `to_yaml`) is appended to the command's overrides; the command function never sees the option."""

    def decorate(fn: Callable) -> Callable:
        fn = click.option(*decls, default=None, **click_kwargs)(fn)
        name = fn.__click_params__[-1].name

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(name)
            if value is not None:
                kwargs["overrides"] = tuple(kwargs.get("overrides", ())) + (f"{key}={to_yaml(value)}",)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def _quoted(value: Any) -> str:
    return repr(str(value))  # a YAML single-quoted string: paths and URLs stay strings


DATA_OPTIONS = [  # where a dataset read from disk lives, and where the rank store goes
    config_option("--data-root", key="dataset.params.root", type=click.Path(),
                  to_yaml=lambda p: _quoted(Path(p).expanduser().resolve()),
                  help="Directory of a dataset read from disk (torchvision layout, or train/ and val/ folders)."),
    config_option("--download/--no-download", key="dataset.params.download", to_yaml=lambda b: str(b).lower(),
                  help="Let torchvision fetch the dataset into --data-root (needs internet)."),
    config_option("--image-size", key="dataset.params.image_size", type=click.IntRange(min=8),
                  help="Side of the square images of imagenet10 / folder datasets (e.g. 112 or 224)."),
    config_option("--store", key="store", metavar="PATH|URL", to_yaml=_quoted,
                  help="Rank store location instead of <workdir>/masks.zarr: a path or an fsspec URL "
                       "(s3://, gs://, file://); saved in the workdir's config."),
]


def executor_options(fn: Callable) -> Callable:
    """Where independent tasks run: here, or on a Ray cluster."""
    options = [
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: in this process; ray: one Ray task per job group / chunk range."),
        click.option("--address", default=None, help="Address of a running Ray cluster (default: start one here)."),
        click.option("--ray-auth-token-file", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="The Ray cluster's token file (token authentication; default: $RAY_AUTH_TOKEN, "
                          "$RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token when present)."),
        click.option("--gpus-per-task", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="GPUs Ray reserves per task (fractional packs small models on one GPU)."),
        click.option("--cpus-per-task", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                     help="CPUs Ray reserves per task."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="local executor: worker processes (default: one per GPU when there are several, "
                          "else this process)."),
    ]

    @functools.wraps(fn)
    def command(*args, ray_auth_token_file=None, **kwargs):
        # the token file only matters to make_executor: pass it there without widening every command
        click.get_current_context().meta[_TOKEN_FILE] = ray_auth_token_file
        return fn(*args, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


_TOKEN_FILE = "fastroar.ray_auth_token_file"


def make_executor(executor: str, address: str | None, gpus_per_task: float, cpus_per_task: float,
                  workers: int | None = None, ray_auth_token_file: str | None = None):
    from fastroar.executors import get_executor

    if workers is not None and executor != "local":
        raise click.UsageError("--workers applies to --executor local (Ray places tasks itself)")
    return get_executor(executor, address=address, num_gpus=gpus_per_task, num_cpus=cpus_per_task,
                        workers=workers, auth_token_file=ray_auth_token_file or _context_token_file())


def _context_token_file() -> str | None:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_TOKEN_FILE) if ctx is not None else None


def resolve(workdir: str, dataset: str | None, config_path: str | None, overrides: tuple[str, ...],
            device: str | None, loader: str | None, create: bool = False):
    """(config, Workdir): --config, else --dataset's YAML, else the workdir's saved config, else the default."""
    from fastroar.config import load_config
    from fastroar.workspace import Workdir

    saved = Path(workdir) / "config.yaml"
    path = config_path if config_path or dataset or not saved.exists() else saved
    sets = list(overrides)
    if device:
        sets.append(f"device={device}")
    if loader:
        sets.append(f"loader={loader}")
    cfg = load_config(dataset=dataset, path=path, overrides=sets)
    # after the config is valid: a bad option creates nothing
    return cfg, Workdir(workdir, create=create, store=cfg.get("store"))


def save_config(cfg: dict[str, Any], wd) -> None:
    from fastroar.workspace import atomic_write_text

    atomic_write_text(wd.root / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))


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
    from fastroar.datasets.prepare import prepare as prepare_data

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader, create=True)
    prepared, did = prepare_data(cfg, wd, progress=progress)
    save_config(cfg, wd)  # only once its data exist: a failed prepare leaves the workdir's config as it was
    sizes = ", ".join(f"{s} {n}" for s, n in prepared.meta["sizes"].items())
    click.echo(f"[prepare] {prepared.meta['name']}: {sizes} images of shape {tuple(prepared.shape)} "
               f"{'written to' if did else 'already in'} {prepared.dir}")


@cli.command()
@common_options
@fail_cleanly
def train(workdir, dataset, config_path, overrides, device, loader, progress) -> None:
    """Train the config's base models (standard and PGD-robust)."""
    from fastroar.training.stage import train_stage

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader)
    train_stage(cfg, wd, progress=progress, log=click.echo)


@cli.command()
@common_options
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@executor_options
@fail_cleanly
def precompute(workdir, dataset, config_path, overrides, device, loader, progress, models, attributions,
               executor, address, gpus_per_task, cpus_per_task, workers) -> None:
    """Attribute every image, rank its coordinates and store rank maps and masks (Zarr)."""
    from fastroar.attribution.precompute import precompute_stage

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader)
    t0 = time.perf_counter()
    n = precompute_stage(cfg, wd, progress=progress, log=click.echo, models=models or None,
                         attributions=attributions or None,
                         executor=make_executor(executor, address, gpus_per_task, cpus_per_task, workers))
    click.echo(f"[precompute] {n} chunks computed in {time.perf_counter() - t0:.1f}s")


RECIPE_OPTION = config_option(
    "--recipe", key="retrain.recipe", type=click.Choice(["paper", "fast"]),
    help="Retraining schedule: paper (the config's) or fast (short one-cycle, label smoothing, bf16 on GPU); "
         "config key retrain.recipe, recorded in every result.")

FILL_OPTION = config_option(
    "--fill", key="retrain.fill", type=click.Choice(["zero", "mean"]),
    help="Value of removed coordinates: zero (the paper's definition; config default) or mean (the train "
         "split's mean, as the reference code's early version). Config key retrain.fill (which also takes a "
         "number).")


def parse_levels(ctx, param, values) -> list[float] | None:
    from fastroar.config import check_level

    levels = [v for item in values for v in str(item).split(",") if v.strip()]
    try:
        return [check_level(v) for v in levels] or None
    except FastroarError as e:
        raise click.BadParameter(str(e)) from None


@cli.command()
@common_options
@click.option("--k", "levels", multiple=True, callback=parse_levels,
              help="Level(s) k in (0, 1): fraction of coordinates kept (repeatable or comma-separated).")
@click.option("--direction", type=click.Choice(["top", "bottom", "both"]), default="both", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Runs per (level, direction).")
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@FILL_OPTION
@RECIPE_OPTION
@executor_options
@fail_cleanly
def retrain(workdir, dataset, config_path, overrides, device, loader, progress, levels, direction, seeds,
            models, attributions, executor, address, gpus_per_task, cpus_per_task, workers) -> None:
    """Retrain fresh models on top-k / bottom-k unmasked data; one result record per job."""
    from fastroar.roar.retrain import retrain_stage

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader)
    directions = ["top", "bottom"] if direction == "both" else [direction]
    retrain_stage(cfg, wd, progress=progress, log=click.echo,
                  executor=make_executor(executor, address, gpus_per_task, cpus_per_task, workers), models=models or None,
                  attributions=attributions or None, levels=levels, directions=directions, n_seeds=seeds)


@cli.command()
@common_options
@FILL_OPTION
@RECIPE_OPTION
@fail_cleanly
def report(workdir, dataset, config_path, overrides, device, loader, progress) -> None:
    """Print the DiffROAR table, write it as CSV and plot the curves (PNG)."""
    from fastroar.report import report_stage

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader)
    report_stage(cfg, wd, log=click.echo)


@cli.command()
@common_options
@click.option("--k", "levels", multiple=True, callback=parse_levels,
              help="Level(s) k in (0, 1) (repeatable or comma-separated). Default: the config's levels.")
@click.option("--model", "models", multiple=True, help="Only this base model (repeatable).")
@click.option("--attribution", "attributions", multiple=True, help="Only this attribution (repeatable).")
@click.option("--noise", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="Std of the noise added to imputed pixels, as a fraction of the inputs' value range.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the imputation noise.")
@fail_cleanly
def estimate(workdir, dataset, config_path, overrides, device, loader, progress, levels, models, attributions,
             noise, seed) -> None:
    """ROAD estimate without retraining: impute removed pixels (noisy linear), evaluate the base model."""
    from fastroar.estimate.road import estimate_stage

    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader)
    t0 = time.perf_counter()
    records = estimate_stage(cfg, wd, models=models or None, attributions=attributions or None, levels=levels,
                             noise=noise, seed=seed, log=click.echo)
    from fastroar.report import format_table

    click.echo("ROAD (acc(top-k kept, rest imputed) - acc(bottom-k kept, rest imputed); original model)")
    click.echo(format_table(records, ("model", "attribution", "k", "acc_top", "acc_bottom", "road")))
    click.echo(f"[estimate] done in {time.perf_counter() - t0:.1f}s")


@cli.command()
@common_options
@click.option("--quick", is_flag=True, help="Tiny settings (seconds; for tests), not for conclusions.")
@click.option("--instances", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows (test instances) in the leakage gradient figure.")
@fail_cleanly
def replicate(workdir, dataset, config_path, overrides, device, loader, progress, quick, instances) -> None:
    """Reproduce the paper's findings (Fig. 5 / Theorem 1, BlockMNIST-style, DiffROAR) into <workdir>/replicate/."""
    from fastroar.replicate import replicate_stage

    t0 = time.perf_counter()
    summary = replicate_stage(workdir, dataset=dataset, config_path=config_path, overrides=overrides,
                              device=device, loader=loader, progress=progress, quick=quick,
                              instances=instances, log=click.echo)
    click.echo(f"[replicate] done in {time.perf_counter() - t0:.1f}s; see {summary['out_dir']}/summary.md")


@cli.command()
@common_options
@FILL_OPTION
@RECIPE_OPTION
@fail_cleanly
def run(workdir, dataset, config_path, overrides, device, loader, progress) -> None:
    """prepare -> train -> precompute -> retrain -> report for one config (finished stages are skipped)."""
    from fastroar.attribution.precompute import precompute_stage
    from fastroar.datasets.prepare import prepare as prepare_data
    from fastroar.report import report_stage
    from fastroar.roar.retrain import retrain_stage
    from fastroar.training.stage import train_stage

    t0 = time.perf_counter()
    cfg, wd = resolve(workdir, dataset, config_path, overrides, device, loader, create=True)
    prepared, did = prepare_data(cfg, wd, progress=progress)
    save_config(cfg, wd)
    click.echo(f"[prepare] {prepared.meta['name']} {'written to' if did else 'already in'} {prepared.dir}")
    train_stage(cfg, wd, progress=progress, log=click.echo)
    precompute_stage(cfg, wd, progress=progress, log=click.echo)
    retrain_stage(cfg, wd, progress=progress, log=click.echo)
    click.echo("")
    report_stage(cfg, wd, log=click.echo)
    click.echo(f"[run] done in {time.perf_counter() - t0:.1f}s; everything is in {wd.root}")


def main() -> None:
    cli(prog_name="fastroar")


if __name__ == "__main__":
    main()
