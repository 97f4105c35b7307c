"""Options and parsing shared by the `fastroar` commands; the commands themselves are in commands.py.

Errors a user can cause end in one message naming the fix and exit code 2, without a traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from fastroar.errors import FastroarError

DEFAULT_WORKDIR = "fastroar-work"


def fail_cleanly(fn: Callable) -> Callable:
    """Turns user-caused errors and Ctrl-C into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _terminate_as_interrupt()
        try:
            return fn(*args, **kwargs)
        except StdoutClosed as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except FastroarError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except BrokenPipeError:  # e.g. `fastroar report | head -1`: the reader left; the files are complete
            _silence_stdout()
            click.echo("Error: the output pipe closed before everything was printed (broken pipe); the files "
                       "written are complete: rerun without the pipe, or read them", err=True)
            sys.exit(2)
        except OSError as e:  # the machine refused (permissions, disk full, ...): say what and where
            where = f" ({e.filename})" if e.filename else ""
            click.echo(f"Error: {e.strerror or e}{where}; check that the path is writable and has space, "
                       "then rerun the same command (finished work is kept)", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            what = "Terminated (SIGTERM)" if isinstance(e, Terminated) else "Interrupted"
            click.echo(f"\n{what}: finished work is kept; rerun the same command to resume.", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)

    return wrapper


class Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C is: the stage stops its tasks and removes its temporary files (the default
    action ends the process on the spot, leaving e.g. report/.diffroar.png.XXXX behind)."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _terminate_as_interrupt() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


class StdoutClosed(FastroarError):
    """Standard output refused a line (a full device, an I/O error) while the work itself went on."""


def echo(text: str) -> None:
    """click.echo for the stages' log: when the reader of a pipe has left (`fastroar run | head -2`), the
    rest of the log is dropped and the work goes on (before, the run stopped after train); when stdout
    itself fails (`> /dev/full`), one line says so, not "check that the path is writable"."""
    if getattr(echo, "closed", False):
        return
    try:
        click.echo(text)
    except BrokenPipeError:
        echo.closed = True  # type: ignore[attr-defined]
        _silence_stdout()
    except OSError as e:
        echo.closed = True  # type: ignore[attr-defined]
        _silence_stdout()
        raise StdoutClosed(f"standard output refused the log ({e.strerror or e}); the work up to here is kept: "
                           "rerun with stdout sent to a file or a terminal") from None


def _silence_stdout() -> None:
    """Points stdout at /dev/null so that Python's final flush does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real stdout (e.g. under a test runner)
        pass


def common_options(fn: Callable, *, data_root: bool = True) -> Callable:
    """Options every stage takes: where to work and which config, with overrides. data_root=False leaves
    out --data-root, for a command that gives it its own meaning (replicate)."""
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
        click.option("--progress/--no-progress", default=None,
                     help="Show progress bars (default: only when stderr is a terminal, so logs stay clean)."),
    ]
    for option in reversed(options + (DATA_OPTIONS if data_root else DATA_OPTIONS[1:])):
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
    config_option("--image-size", key="dataset.params.image_size", type=click.IntRange(min=8, max=1024),
                  help="Side of the square images of imagenet10 / folder datasets (e.g. 112 or 224)."),
    config_option("--store", key="store", metavar="PATH|URL", to_yaml=_quoted,  # local paths saved absolute
                  help="Rank store location instead of <workdir>/masks.zarr: a path or an fsspec URL "
                       "(s3://, gs://, file://); saved in the workdir's config."),
]


def executor_options(fn: Callable) -> Callable:
    """Where independent tasks run: here, or on a Ray cluster. The command receives one argument,
    `executor`: a function that builds the executor from these options (Ray is imported only then)."""
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
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="local executor, in this process: threads for tasks that can share it (the stacked "
                          "MLP retrain groups on the CPU; default: one per usable CPU core)."),
    ]

    @functools.wraps(fn)
    def command(*args: Any, executor: str, address: str | None, ray_auth_token_file: str | None,
                gpus_per_task: float, cpus_per_task: float, workers: int | None, threads: int | None,
                **kwargs: Any) -> Any:
        for flag, value in (("--workers", workers), ("--threads", threads)):
            if value is not None and executor != "local":
                raise click.UsageError(f"{flag} applies to --executor local (Ray places tasks itself)")
        build = functools.partial(make_executor, executor, address, gpus_per_task, cpus_per_task, workers,
                                  ray_auth_token_file, threads)
        return fn(*args, executor=build, **kwargs)

    for option in reversed(options):
        command = option(command)
    return command


def make_executor(executor: str, address: str | None, gpus_per_task: float, cpus_per_task: float,
                  workers: int | None = None, ray_auth_token_file: str | None = None, threads: int | None = None):
    from fastroar.engine.executors import get_executor

    return get_executor(executor, address=address, num_gpus=gpus_per_task, num_cpus=cpus_per_task,
                        workers=workers, auth_token_file=ray_auth_token_file, threads=threads)


def context(workdir: str, dataset: str | None, config_path: str | None, overrides: tuple[str, ...],
            device: str | None, loader: str | None, progress: bool, create: bool = False,
            checkpoints: dict[str, str] | None = None, verbose: bool = False):
    """The stage Context of a command: its config resolved (--device / --loader are --set shorthands)."""
    from fastroar.stages.contract import open_context

    sets = list(overrides)
    if device:
        sets.append(f"device={device}")
    if loader:
        sets.append(f"loader={loader}")
    if progress is None:
        progress = sys.stderr.isatty()
    echo.closed = False  # type: ignore[attr-defined]
    return open_context(workdir, dataset=dataset, config_path=config_path, overrides=sets, create=create,
                        log=echo, progress=progress, checkpoints=checkpoints, verbose=verbose)


def _name_path(ctx, param, values) -> dict[str, str]:
    """NAME=PATH values (repeatable) as {NAME: absolute PATH}."""
    out: dict[str, str] = {}
    for item in values:
        name, sep, path = str(item).partition("=")
        if not sep or not name.strip() or not path.strip():
            raise click.BadParameter(f"{item!r} must look like NAME=PATH")
        out[name.strip()] = str(Path(path.strip()).expanduser().resolve())
    return out


def scores_option(fn: Callable) -> Callable:
    """--scores NAME=PATH (repeatable): a shorthand for `--set scores.NAME=PATH` (precomputed scores)."""
    fn = click.option("--scores", "scores", multiple=True, metavar="NAME=PATH", callback=_name_path,
                      help="Import precomputed attribution scores as attribution NAME (repeatable); PATH: a "
                           "directory with train.npy and test.npy (or train/ test/ of per-image <index>.npy, "
                           "or Zarr arrays), an .npz or a Zarr group with train and test. Config key scores.")(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scores = kwargs.pop("scores")
        sets = [f"scores.{name}={_quoted(path)}" for name, path in scores.items()]
        kwargs["overrides"] = tuple(kwargs.get("overrides", ())) + tuple(sets)
        return fn(*args, **kwargs)

    return wrapper


CHECKPOINT_OPTION = click.option(
    "--checkpoint", "checkpoints", multiple=True, metavar="NAME=PATH", callback=_name_path,
    help="Register a trained model of your own as base model NAME instead of training it (repeatable): a "
         "saved state dict or whole nn.Module that fits model.arch. Config: models: [{name: NAME, checkpoint: PATH}].")


VERBOSE_OPTION = click.option(
    "--verbose", "-v", is_flag=True,
    help="Print where each retrain task's time goes: compute (training, evaluation) and the rest (rank "
         "loading, setup, recording) per job.")


RECIPE_OPTION = config_option(
    "--recipe", key="retrain.recipe", type=click.Choice(["paper", "fast", "airbench"]),
    help="Retraining schedule: paper (the config's), fast (short one-cycle, label smoothing, bf16 on GPU) or "
         "airbench (airbench94's hyperparameters, for model.arch airbench); "
         "config key retrain.recipe, recorded in every result.")

FILL_OPTION = config_option(
    "--fill", key="retrain.fill", type=click.Choice(["zero", "mean", "road"]),
    help="Value of removed coordinates: zero (the paper's definition; config default), mean (the train "
         "split's mean, as the reference code's early version) or road (imputed from their neighbours with "
         "ROAD's noisy linear imputation, so the mask's shape does not leak the label; resident data only). "
         "Config key retrain.fill (which also takes a number).")


def parse_levels(ctx, param, values) -> list[float] | None:
    from fastroar.method import check_level

    levels = [v for item in values for v in str(item).split(",") if v.strip()]
    try:
        return [check_level(v) for v in levels] or None
    except FastroarError as e:
        raise click.BadParameter(str(e)) from None


def finite_positive(ctx, param, value: float | None) -> float | None:
    """A number option that must be finite and > 0 (click's FloatRange lets inf through)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number > 0, got {value}")
    return value
