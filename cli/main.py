"""The ``herd`` command: ``serve`` (everything on one machine), ``api``, ``worker``, the
client verbs of the ``ollama`` CLI (``list``, ``ps``, ``show``, ``run``, ``stop``, ``cp``,
``rm``, ``create``, ``pull``, ``push``) and Herd's own (``cluster``, ``scale``, ``top``)
against the API at ``HERD_HOST``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import structlog

from cli.embedded import EmbeddedRedis
from cli.ports import PortUnavailable, check_can_listen, free_port, listen
from cli.verbs import TIMEOUT, VerbError, Verbs, base_url
from shared.hostaddr import HostAddress
from shared.logging import configure_logging
from shared.settings import Settings

log = structlog.get_logger()

#: `herd serve` starts a worker that died again after this pause, unless it did so this
#: many times within the window: then something kills it at every start, and serve stops.
RESTART_PAUSE_S = 1.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0
#: `herd serve`'s model store when HERD_MODELS_DIR is not set (Ollama's layout).
DEFAULT_STORE = Path("~/.herd/models")


def _serve(settings: Settings) -> int:
    """Embedded Redis (unless HERD_REDIS_URL or HERD_REDIS_SENTINELS is set), one worker and
    one API, as children.

    The API starts once the worker is ready (its /readyz: models loaded, advert in Redis),
    so the API's port opens when a request can be served rather than seconds before. A
    worker that dies after it served (killed, out of memory) is started again, as Ollama
    starts a new runner; one that dies before it is ready, or the API, stops them all.
    """
    check_can_listen(settings.host, "HERD_HOST")
    env = dict(os.environ)
    if "worker_health_addr" in settings.model_fields_set:
        check_can_listen(settings.worker_health_addr, "HERD_WORKER_HEALTH_ADDR")
        probes = settings.worker_health_addr
    else:
        # nothing probes this worker: a fixed port would stop a second `herd serve` here
        probes = HostAddress("http", "127.0.0.1", free_port())
        env["HERD_WORKER_HEALTH_ADDR"] = f"{probes.host}:{probes.port}"
    if settings.models_dir is None:
        # a store of its own, so `ollama pull` and `ollama create` work out of the box
        store = DEFAULT_STORE.expanduser()
        store.mkdir(parents=True, exist_ok=True)
        env["HERD_MODELS_DIR"] = str(store)
        log.info("model_store", path=str(store))
    redis: EmbeddedRedis | None = None
    if settings.redis_url is None and not settings.redis_sentinels:
        redis = EmbeddedRedis()
        redis.start()
        env["HERD_REDIS_URL"] = redis.url
        log.info("embedded_redis_started", url=redis.url)
    children = [_child("worker", env)]
    stop = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        stop.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    ready = f"{base_url(probes)}/readyz"
    try:
        if _until_ready(children[0], ready, stop) and not stop.is_set():
            children.append(_child("api", env))
            log.info("herd_serving", url=settings.host.url)
            restarts: deque[float] = deque(maxlen=MAX_RESTARTS)
            while not stop.is_set() and children[1].poll() is None:
                if children[0].poll() is not None:
                    # its streams end with an error line once its advert expires; queued
                    # jobs wait for the new one (Redis keeps them)
                    now = time.monotonic()
                    if len(restarts) == MAX_RESTARTS and now - restarts[0] < RESTART_WINDOW_S:
                        log.error("worker_keeps_dying", restarts=MAX_RESTARTS)
                        break
                    restarts.append(now)
                    log.warning("worker_died_restarting", code=children[0].returncode)
                    if stop.wait(RESTART_PAUSE_S):
                        break
                    children[0] = _child("worker", env)
                    if not _until_ready(children[0], ready, stop):
                        break
                time.sleep(0.2)
        forward(signal.SIGTERM, None)  # stopping, or one died for good: stop the rest
        deadline = time.monotonic() + settings.shutdown_grace_s + 5
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    finally:
        if redis is not None:
            redis.stop()
    # a child stopped by our SIGTERM exits 0 (worker) or negative; report real failures
    return max([0, *(child.returncode or 0 for child in children)])


def _child(role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", role], env=env)


def _until_ready(worker: subprocess.Popen[bytes], url: str, stop: threading.Event) -> bool:
    """Wait until the worker's readiness probe answers 200; False if it exits or we are
    told to stop first."""
    with httpx.Client(timeout=1, trust_env=False) as client:
        while worker.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return True
            if stop.wait(0.1):
                return False
    return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="herd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="embedded Redis, one API and one worker")
    sub.add_parser("api", help="run an API process")
    sub.add_parser("worker", help="run a worker process")
    sub.add_parser("list", aliases=["ls"], help="list the models the cluster serves")
    sub.add_parser("ps", help="list the loaded models, on every worker")
    sub.add_parser("show", help="show a model's information").add_argument("model")
    run = sub.add_parser("run", help="chat with a model (the prompt, or lines from stdin)")
    run.add_argument("model")
    run.add_argument("prompt", nargs="*")
    sub.add_parser("stop", help="unload a model").add_argument("model")
    cp = sub.add_parser("cp", help="copy a model (a new name for it)")
    cp.add_argument("source")
    cp.add_argument("destination")
    sub.add_parser("rm", help="remove models from the catalog").add_argument("model", nargs="+")
    create = sub.add_parser("create", help="create a model from a Modelfile")
    create.add_argument("model")
    create.add_argument(
        "-f", "--file", default="Modelfile", help="the Modelfile (default: ./Modelfile)"
    )
    pull = sub.add_parser("pull", help="pull a model from a registry into the cluster's store")
    pull.add_argument("model")
    pull.add_argument("--insecure", action="store_true", help="allow an http registry")
    push = sub.add_parser("push", help="push a model of the cluster's store to its registry")
    push.add_argument("model")
    push.add_argument("--insecure", action="store_true", help="allow an http registry")
    sub.add_parser("cluster", help="list the live workers: memory, slots, loaded models")
    scale = sub.add_parser("scale", help="set how many workers keep a model loaded")
    scale.add_argument("model")
    scale.add_argument(
        "--min",
        dest="min_replicas",
        type=int,
        required=True,
        metavar="N",
        help="workers that always keep it loaded (0 without --max: no policy)",
    )
    scale.add_argument(
        "--max",
        dest="max_replicas",
        type=int,
        metavar="M",
        help="at most this many workers load it (default: as demand asks)",
    )
    live = sub.add_parser("top", help="a live view of the workers, models and queues")
    live.add_argument("--once", action="store_true", help="print one view and exit")
    dlq = sub.add_parser("dlq", help="jobs set aside after their runs stopped workers")
    dlq.add_argument("action", nargs="?", choices=["list", "drop", "retry"], default="list")
    dlq.add_argument("entry", nargs="?", help="an entry id (drop, retry)")
    return parser


def _client_verb(args: argparse.Namespace, settings: Settings) -> int:
    key = settings.api_key
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
    with httpx.Client(base_url=base_url(settings.host), timeout=TIMEOUT, headers=headers) as client:
        verbs = Verbs(client)
        try:
            if args.command in ("list", "ls"):
                verbs.list_models()
            elif args.command == "ps":
                verbs.ps()
            elif args.command == "show":
                verbs.show(args.model)
            elif args.command == "run":
                prompt = " ".join(args.prompt) or None
                verbs.run(args.model, prompt, lambda: sys.stdin.readline() or None)
            elif args.command == "stop":
                verbs.stop(args.model)
            elif args.command == "cp":
                verbs.cp(args.source, args.destination)
            elif args.command == "cluster":
                verbs.cluster()
            elif args.command == "scale":
                verbs.scale(args.model, args.min_replicas, args.max_replicas)
            elif args.command == "top":
                # rich only for this verb: the others start without it
                from rich.console import Console

                from cli.top import top

                top(client, Console(), once=args.once)
            elif args.command == "dlq":
                verbs.dlq(args.action, args.entry)
            elif args.command == "pull":
                from rich.console import Console

                from cli.pull import pull

                pull(client, args.model, insecure=args.insecure, console=Console(highlight=False))
            elif args.command == "push":
                from rich.console import Console

                from cli.push import push

                push(client, args.model, insecure=args.insecure, console=Console(highlight=False))
            elif args.command == "create":
                from pathlib import Path

                from rich.console import Console

                from cli.create import create

                create(client, args.model, Path(args.file), Console(soft_wrap=True))
            else:
                verbs.rm(args.model)
        except VerbError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            return 1
        except BrokenPipeError:  # `herd run … | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except KeyboardInterrupt:
            return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = Settings()
    if args.command not in ("serve", "api", "worker"):
        return _client_verb(args, settings)
    configure_logging(settings.log_format, settings.log_level)
    if args.command != "serve" and settings.redis_url is None and not settings.redis_sentinels:
        parser.error(
            "HERD_REDIS_URL or HERD_REDIS_SENTINELS must be set for `herd api` and `herd worker`"
        )
    from shared.redis import RedisConfigError, redis_passwords

    try:
        # an unreadable password file: one line now, not a traceback from a child's start-up
        redis_passwords(settings)
        if args.command == "serve":
            return _serve(settings)
        if args.command == "api":
            check_can_listen(settings.host, "HERD_HOST")
            from api.main import main as api_main

            api_main(settings)
        else:
            probes = listen(settings.worker_health_addr, "HERD_WORKER_HEALTH_ADDR")
            from worker.main import main as worker_main

            worker_main(settings, probes)
    except (PortUnavailable, RedisConfigError) as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    return 0
