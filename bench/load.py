"""A bounded load test: N concurrent clients (Label Studio's official SDK, one per thread) save
annotations for a while, and every failure is counted by its cause ("database is locked" apart).

    python -m bench.load --url http://127.0.0.1:8080 --project 1 [--clients 16] [--seconds 60]

The API token comes from $LABEL_STUDIO_API_KEY (never argv). Each client stops at the deadline or after
--max-requests, whichever comes first, so a hung server cannot keep the run going.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from dataclasses import dataclass, field

LOCKED = "database is locked"


@dataclass
class LoadResult:
    clients: int
    seconds: float
    ok: int = 0
    failures: collections.Counter = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    failed_at: list[float] = field(default_factory=list)   # time.monotonic() of each failure

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def locked(self) -> int:
        return self.failures.get(LOCKED, 0)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        causes = ", ".join(f"{n} {why}" for why, n in self.failures.most_common()) or "none"
        return (f"{self.clients} clients for {self.seconds:.0f} s: {self.ok} annotations saved, "
                f"{self.failed} failed ({causes}); latency p50 {self.percentile(0.5) * 1000:.0f} ms, "
                f"p95 {self.percentile(0.95) * 1000:.0f} ms")


def cause(exc: BaseException) -> str:
    """What a failed request says, reduced to a few words that group well."""
    status = getattr(exc, "status_code", None)
    body = str(getattr(exc, "body", "") or exc)
    if LOCKED in body:
        return LOCKED
    if status:
        return f"HTTP {status}"
    return type(exc).__name__


def run_load(url: str, token: str, project: int, *, clients: int = 16, seconds: float = 60,
             max_requests: int = 100_000, timeout: float = 60, stop: threading.Event | None = None) -> LoadResult:
    """`stop` (set by the caller) ends the run before `seconds` are over: load for as long as something
    else takes (a rolling restart)."""
    from label_studio_sdk import LabelStudio

    setup = LabelStudio(base_url=url, api_key=token, timeout=timeout)
    task_ids = [t.id for t in setup.tasks.list(project=project)]
    if not task_ids:
        raise SystemExit(f"project {project} has no tasks to annotate")
    result = LoadResult(clients, seconds)
    lock = threading.Lock()
    deadline: list[float] = []
    start = threading.Barrier(clients, action=lambda: deadline.append(time.monotonic() + seconds))

    def client(number: int) -> None:
        sdk = LabelStudio(base_url=url, api_key=token, timeout=timeout)
        start.wait()  # all clients connected: the clock starts for everyone at once
        for i in range(max_requests):
            if time.monotonic() >= deadline[0] or (stop is not None and stop.is_set()):
                return
            task = task_ids[(number * 7919 + i) % len(task_ids)]
            began = time.monotonic()
            try:
                sdk.annotations.create(id=task, result=[{
                    "from_name": "label", "to_name": "text", "type": "choices",
                    "value": {"choices": ["pos" if (i + number) % 2 else "neg"]}}])
            except Exception as exc:  # every failure is counted, none ends the run
                with lock:
                    result.failures[cause(exc)] += 1
                    result.failed_at.append(time.monotonic())
            else:
                with lock:
                    result.ok += 1
                    result.latencies.append(time.monotonic() - began)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout * 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    token = os.environ.get("LABEL_STUDIO_API_KEY")
    if not token:
        print("set LABEL_STUDIO_API_KEY to an API token of the instance", file=sys.stderr)
        return 2
    result = run_load(args.url, token, args.project, clients=args.clients, seconds=args.seconds,
                      max_requests=args.max_requests)
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
