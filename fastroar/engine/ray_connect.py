"""Connecting to a Ray cluster with a message for each way it fails: nothing answers at the address, a
stale address in Ray's own files, token authentication (mode, token file), other Ray or Python versions on
the cluster. ray.init itself retries for minutes and then says only "failed to connect"; these checks run
before it (RayExecutor.connect) or read its error after. Some use Ray's private modules: they are imported
where used, and a Ray without them falls back to ray.init's own message.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastroar.errors import ConfigError, FastroarError


def check_reachable(address: str, timeout: float = 5.0, named_by: str | None = None) -> None:
    """Fails fast (ray.init itself waits minutes) when nothing answers at host:port. `named_by`: where the
    address came from when the user did not pass it (RAY_ADDRESS, Ray's ray_current_cluster file)."""
    import socket

    host, port = split_address(address)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        if named_by is not None:
            raise FastroarError(f"no Ray cluster answers at {address} ({e.strerror or e}), the address {named_by} "
                                "names, which Ray connects to when no --address is given (it would retry it "
                                "forever); clear it (`ray stop`, or delete the file / unset the variable) to "
                                "start a private Ray here, pass --address of a running cluster, or use "
                                "--executor local") from None
        raise FastroarError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                            "`ray start --head --port PORT` and pass HOST:PORT, or use --executor local") from None


def check_implicit_address() -> None:
    """Without --address, ray.init connects to $RAY_ADDRESS, else to the cluster named in Ray's
    <temp dir>/ray/ray_current_cluster (written by the last `ray start`, left behind when that cluster
    died), and retries a dead one about every 40 s, forever. Checks that address first, naming its source."""
    env = os.environ.get("RAY_ADDRESS", "")
    if env and env not in ("auto", "local"):
        if "://" not in env:
            check_reachable(env, named_by="$RAY_ADDRESS")
        return
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # another Ray layout: ray.init's own lookup and messages
        return
    path = Path(get_ray_address_file(None))
    try:
        address = path.read_text().strip()
    except OSError:  # none: a private Ray starts here
        return
    if address:
        check_reachable(address, named_by=f"Ray's file {path}")


def split_address(address: str) -> tuple[str, str]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} must look like HOST:PORT (e.g. 127.0.0.1:6379)")
    return host.strip("[]"), port


# Ray token authentication (Ray >= 2.52): the mode comes from RAY_AUTH_MODE (token | disabled), the token from
# RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. `ray start --head` turns token mode
# on by itself when a token exists, but `ray.init(address=...)` does not: a driver must set RAY_AUTH_MODE.
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def use_auth_token(token_file: str | None = None) -> None:
    """Sets Ray's environment so that this process sends the cluster's token, as `ray start --head` would:
    `token_file` if given, else RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token when present (an
    explicit RAY_AUTH_MODE is respected)."""
    env = os.environ
    if token_file:
        _check_token_file(token_file, "--ray-auth-token-file")
        env[AUTH_TOKEN_PATH] = str(Path(token_file).expanduser().resolve())
        env.pop(AUTH_TOKEN, None)  # it would take precedence over the file
        env[AUTH_MODE] = "token"
    elif env.get(AUTH_TOKEN_PATH):
        _check_token_file(env[AUTH_TOKEN_PATH], AUTH_TOKEN_PATH)  # Ray aborts the process on a bad file
    if AUTH_MODE not in env and token_source() is not None:
        env[AUTH_MODE] = "token"
    try:  # Ray caches its config and token: make an already imported Ray see the new environment
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except Exception:
        pass


def token_source() -> str | None:
    """Where Ray takes the token from in this environment, or None when there is none."""
    if os.environ.get(AUTH_TOKEN):
        return f"${AUTH_TOKEN}"
    if os.environ.get(AUTH_TOKEN_PATH):
        return os.environ[AUTH_TOKEN_PATH]
    path = default_token_path()
    return str(path) if path.is_file() and path.stat().st_size > 0 else None


def _check_token_file(path: str, what: str) -> None:
    p = Path(path).expanduser()
    try:
        ok = bool(p.read_text().strip())
    except OSError as e:
        raise ConfigError(f"{what}: cannot read the Ray token file {path} ({e.strerror or e})") from None
    if not ok:
        raise ConfigError(f"{what}: the Ray token file {path} is empty")


def probe_cluster(address: str, timeout: float = 15.0) -> bool:
    """Asks the cluster's GCS at host:port who it is, with our credentials, before ray.init (which retries for
    a long time on a refused token and says only "failed to connect"). Raises the FastroarError that names the
    problem: refused credentials, version mismatch, or no Ray at that port. Returns whether the cluster's nodes
    run on the loopback interface (a head started with --node-ip-address=127.0.0.1)."""
    import threading

    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:
            from ray._common.usage import usage_lib
            from ray._raylet import GcsClient

            client = GcsClient(address=address)
            outcome["metadata"] = usage_lib.get_cluster_metadata(client)
            nodes = client.get_all_node_info(timeout=timeout).values()
            outcome["ips"] = {n.node_manager_address for n in nodes if n.state == 0}  # 0: ALIVE
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    thread = threading.Thread(target=ask, daemon=True)  # the GCS client can block ~40 s on a non-Ray port
    thread.start()
    thread.join(timeout)
    error = outcome.get("error")
    if error is not None:
        raise classify_ray_error(error, address) or FastroarError(
            f"no Ray cluster answers at {address} ({_first_line(error)}); is it the port given to "
            "`ray start --head --port`? Or use --executor local") from None
    if "metadata" not in outcome:
        raise FastroarError(f"no Ray cluster answers at {address} (no reply in {timeout:.0f} s); is it the port "
                            "given to `ray start --head --port`? Or use --executor local")
    check_versions(outcome["metadata"], address)
    return "127.0.0.1" in outcome.get("ips", ())


def check_versions(metadata: dict, address: str) -> None:
    """Ray's own check (same Ray, same Python down to the patch level unless
    RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL=minor), as one line that says which side has what."""
    import platform

    import ray
    from ray._private.utils import check_version_info

    try:
        check_version_info(metadata, "this driver")
    except RuntimeError as e:
        if "Version mismatch" not in str(e):
            raise
        raise FastroarError(version_mismatch_message(
            address, metadata.get("ray_version"), metadata.get("python_version"),
            ray.__version__, platform.python_version())) from None


def version_mismatch_message(address: str, ray_cluster, python_cluster, ray_here, python_here) -> str:
    return (f"Ray version mismatch with the cluster at {address}: it runs Ray {ray_cluster} on Python "
            f"{python_cluster}, this driver Ray {ray_here} on Python {python_here}; run fastroar from an "
            "environment with the cluster's Ray and Python versions (or restart the cluster from this one)")


def classify_ray_error(error: BaseException, address: str, token_file: str | None = None) -> FastroarError | None:
    """The FastroarError for a Ray connection failure we can name (refused token, version mismatch), looking
    through the chain of causes (ray.init wraps them in "Failed to connect to Ray cluster"); else None."""
    import re

    texts, seen = [], error
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = "\n".join(texts)
    if "AuthenticationError" in text or "InvalidAuthToken" in text or "Unauthenticated" in text:
        source = token_file or token_source()
        mode = os.environ.get(AUTH_MODE, "")
        sent = (f"{AUTH_MODE}={mode}: no token was sent" if mode.lower() == "disabled"
                else f"the token from {source} was rejected" if source else "no token was found here")
        return FastroarError(
            f"the Ray cluster at {address} refused our credentials ({sent}); pass the token its nodes were "
            f"started with (`ray get-auth-token` on the head prints it; default file ~/.ray/auth_token) with "
            f"--ray-auth-token-file FILE or {AUTH_TOKEN_PATH}=FILE, or set {AUTH_TOKEN}")
    if "Version mismatch" in text:
        found = dict(re.findall(r"(Ray|Python): (\S+)", text)[:2])
        here = dict(re.findall(r"(Ray|Python): (\S+)", text)[2:4])
        return FastroarError(version_mismatch_message(address, found.get("Ray"), found.get("Python"),
                                                      here.get("Ray"), here.get("Python")))
    return None


def keep_loopback() -> None:
    """Ray rewrites 127.0.0.1/localhost in an address to this machine's network IP, where a head started on
    the loopback interface (--node-ip-address=127.0.0.1) does not listen; Ray keeps loopback addresses
    only where it does not expect other machines (its switch for single-machine platforms)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray._private.ray_constants as ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read when needed, but set when Ray was imported
    except Exception:
        pass


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
