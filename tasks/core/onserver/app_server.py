"""gunicorn's configuration for Label Studio: the settings HumanSignal's own deploy/uwsgi.ini uses (a
request timeout, worker recycling after N requests or past a memory size, no request log: nginx keeps
one), workers sized from the cores and memory the service may use. Runs ON the server: `fab provision`
installs this source, followed by the profile's settings (`SETTINGS`: bind, workers, Label Studio's
folder), as <app_dir>/<name>-gunicorn.conf.py, which gunicorn executes in its master process at each
start and reload. Standard library only; the unit tests import it.

gunicorn reads the lower-case names it knows as settings and the functions named after its hooks as hooks;
everything else here (upper case, leading underscore) it ignores.
"""

from __future__ import annotations

import importlib.util
import json
import os

WORKER_MEMORY_MB = 300          # one Label Studio worker, measured after some requests (RSS)
RESERVED_MEMORY_MB = 512        # the master, nginx, the system: never handed out to workers
WORKER_RECYCLE_MB = 1024        # a worker whose RSS grows past this finishes its request and is replaced
MIN_WORKERS = 2                 # one slow request (an export) never stops the others
CONNECTION_SECONDS = 300        # a worker keeps its database connection this long between requests
# A worker answers GET of this path itself, only from this machine and never through a proxy: its read of
# every table of the live database through Label Studio's models (templates/scripts/check_database.py,
# DATABASE_CHECK_SOURCE below), which a separate process would need a Django start-up for (10 s of CPU).
DATABASE_CHECK_PATH = "/lsvm/read-every-table"
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP", "HTTP_FORWARDED")


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _meminfo_mb() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_limit_mb(proc_self: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory.max on the way from this process's cgroup (v2) up to the root (systemd's
    MemoryMax= of the unit, or a container's limit), None when there is none."""
    try:
        with open(proc_self) as handle:
            path = next((line.strip().split("::", 1)[1] for line in handle if line.startswith("0::")), None)
    except OSError:
        return None
    if path is None:
        return None
    limits = []
    current = path.rstrip("/")
    while True:
        try:
            with open(os.path.join(root, current.lstrip("/"), "memory.max")) as handle:
                value = handle.read().strip()
            if value.isdigit():
                limits.append(int(value) // (1024 * 1024))
        except OSError:
            pass
        if current in ("", "/"):
            break
        current = os.path.dirname(current)
    return min(limits) if limits else None


def memory_mb() -> int | None:
    """The memory the service may use: the machine's, or less when a cgroup limits it."""
    found = [m for m in (_meminfo_mb(), _cgroup_limit_mb()) if m]
    return min(found) if found else None


def worker_count(wanted: int, cpus: int, memory: int | None) -> int:
    """`wanted` when the profile sets it; else HumanSignal's 2 per core, as far as the memory holds them
    (a 2 GB VM must not swap), never fewer than MIN_WORKERS."""
    if wanted > 0:
        return wanted
    by_cpu = 2 * max(cpus, 1)
    if memory is None:
        return max(MIN_WORKERS, by_cpu)
    by_memory = (memory - RESERVED_MEMORY_MB) // WORKER_MEMORY_MB
    return max(MIN_WORKERS, min(by_cpu, by_memory))


def label_studio_dir() -> str:
    """The label_studio package's folder: Label Studio imports its own modules as top-level ones
    (`core`, `projects`, ...), as its manage.py and HumanSignal's uwsgi (`chdir`) arrange."""
    spec = importlib.util.find_spec("label_studio")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("label_studio is not installed in this release")
    return list(spec.submodule_search_locations)[0]


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


# ------------------------------------------------------------------------------------------------
# gunicorn's settings and hooks

raw_env = ["DJANGO_SETTINGS_MODULE=core.settings.label_studio"]
worker_class = "sync"
timeout = 120                   # uwsgi.ini's harakiri: a request still running after 2 minutes is killed
graceful_timeout = 60           # a stop or reload lets requests in flight finish this long
max_requests = 5000             # uwsgi.ini's max-requests, spread so the workers do not recycle together
max_requests_jitter = 500
accesslog = None                # nginx logs every request; Label Studio logs its errors
errorlog = "-"                  # stderr: the journal (systemd) or the screen log
capture_output = True
loglevel = "info"
proc_name = "label-studio"
# The master loads Label Studio once and forks ready workers from it: a start or a recycled worker costs
# one Django setup, not one per worker, and the workers share the loaded code's pages. A reload (HUP) then
# replaces the workers but keeps that code: a new release or a changed env file needs a restart, which is
# what every task here does.
preload_app = True


def post_request(worker, req, environ, resp):
    """uwsgi.ini's reload-on-rss: a worker grown past WORKER_RECYCLE_MB finishes and is replaced."""
    try:
        size = _rss_mb()
    except (OSError, ValueError):
        return
    if size > WORKER_RECYCLE_MB:
        worker.log.info("worker %s uses %d MB (over %d MB): replacing it", worker.pid, size, WORKER_RECYCLE_MB)
        worker.alive = False


def pre_fork(server, worker):
    """No worker may inherit a database connection of the master's (loading Label Studio can open one):
    two processes on one socket or one SQLite handle corrupt each other's conversation."""
    from django.db import connections

    connections.close_all()


def post_worker_init(worker):
    """Each worker keeps its database connection from one request to the next (Django's CONN_MAX_AGE,
    checked before each reuse: CONN_HEALTH_CHECKS), where Label Studio's settings open one per request:
    on PostgreSQL that is a new server process and a scram-sha-256 login each time. A sync worker serves
    one request at a time, so it holds one connection."""
    from django.db import connections

    for alias in connections:
        connections[alias].settings_dict["CONN_MAX_AGE"] = CONNECTION_SECONDS
        connections[alias].settings_dict["CONN_HEALTH_CHECKS"] = True
    worker.wsgi = with_database_check(worker.wsgi, globals().get("DATABASE_CHECK_SOURCE", ""))


def with_database_check(application, check_source: str):
    """`application`, except that GET DATABASE_CHECK_PATH straight from 127.0.0.1 (nginx adds its proxy
    headers, so nothing from outside this machine gets here) is answered by this worker: the JSON of
    check_database.read_every_table, on the connection the worker serves with."""
    namespace: dict = {"__name__": "check_database"}

    def answer(environ, start_response):
        if (environ.get("PATH_INFO") != DATABASE_CHECK_PATH or environ.get("REQUEST_METHOD") != "GET"
                or environ.get("REMOTE_ADDR") != "127.0.0.1" or any(h in environ for h in PROXY_HEADERS)
                or not check_source):
            return application(environ, start_response)
        from django.db import close_old_connections

        close_old_connections()      # what Django does as a request starts: no broken or stale connection
        try:
            if "read_every_table" not in namespace:
                exec(compile(check_source, "check_database.py", "exec"), namespace)
            result = namespace["read_every_table"]()
        except Exception as exc:  # noqa: BLE001 - whatever the check meets is the answer
            result = {"error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:400]}
        finally:
            close_old_connections()
        body = json.dumps({**result, "answered_by": "worker"}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                  ("Cache-Control", "no-store")])
        return [body]

    return answer


def worker_exit(server, worker):
    """A worker that ends as asked (a stop, a reload, a recycle) closes its database connections and
    leaves at once: the interpreter's own clean-up of a forked Django process touches every object it
    inherited, which took 1.3 s of each stop here, while nothing of it is needed. Any other end (a boot
    error's exit code, an exception) goes the usual way, so the master sees it as it is."""
    import sys

    ending = sys.exc_info()[1]   # gunicorn calls this from the `finally` its worker's exit passes through
    if not isinstance(ending, SystemExit) or ending.code not in (0, None):
        return
    from django.db import connections

    connections.close_all()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def when_ready(server):
    server.log.info("Label Studio serves on %s with %d workers (%d CPUs, %s MB memory)", ",".join(server.cfg.bind),
                    server.cfg.workers, _cpus(), memory_mb())


SETTINGS = """
# ------------------------------------------------------------------------------------------------
# This host's (labelstudio-vm's profile)
bind = ["127.0.0.1:{port}"]     # nginx is the one way in
workers = worker_count({workers}, _cpus(), memory_mb())
pythonpath = label_studio_dir()
# gunicorn puts its working directory first on the import path: the release's folder (root's, as in
# HumanSignal's uwsgi.ini), never the data dir, where the service user (and uploads) can write.
chdir = pythonpath
"""
