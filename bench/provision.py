"""Benchmark: fresh `fab provision` on a bare test VM vs the seed guide's hand steps on another bare
test VM, and vs a no-op re-provision.

    python -m bench.provision [--no-guide]

Prints wall times (each until `/health` answers UP through nginx), the fresh/guide ratio (target
<= 0.7), the no-op/fresh ratio (target: no-op <= 3 s and <= 5% of fresh), and where the time goes: per
change the provision plan executed, and the number of SSH round trips. Needs a Docker engine (like the
integration tests).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from dev.testvm.image import NOPASSWD_USER, build_image  # noqa: E402
from dev.testvm.machine import make_key, start_vm  # noqa: E402
from tasks.core import connect
from tasks.core.provision import plan  # noqa: E402


class Recorder:
    """Counts SSH round trips (Host.run calls) and times each change provision executes, in this
    process. Provision is a plan of Changes run by `tasks.core.provision.plan.apply`, which calls
    `tasks.core.provision.plan.execute` for every change with an action: wrapping that one function times every
    step and handler, named by the change's own words (its plan text, else its `what`)."""

    def __init__(self):
        self.round_trips = 0
        self.steps: dict[str, float] = defaultdict(float)

    @contextmanager
    def installed(self):
        """Instrument while inside; the originals come back on exit (so two runs never count twice)."""
        original_run, original_execute = connect.Host.run, plan.execute
        recorder = self

        def counted_run(self, *args, **kwargs):
            recorder.round_trips += 1
            return original_run(self, *args, **kwargs)

        def timed_execute(host, change):
            start = time.perf_counter()
            try:
                return original_execute(host, change)
            finally:
                recorder.steps[change.plan or change.what] += time.perf_counter() - start

        connect.Host.run, plan.execute = counted_run, timed_execute
        try:
            yield self
        finally:
            connect.Host.run, plan.execute = original_run, original_execute


def provision_in_process(ssh_config: Path, profile: Path) -> tuple[float, Recorder]:
    """Runs the real task body in this process (same code as `fab`), instrumented."""
    from fabric import Config, Connection

    from tasks.provision import provision

    recorder = Recorder()
    config = Config(runtime_ssh_path=str(ssh_config))
    config.load_ssh_config()
    connection = Connection("vm", config=config)
    with recorder.installed():
        start = time.perf_counter()
        provision(connection, config=str(profile))
        elapsed = time.perf_counter() - start
    connection.close()
    return elapsed, recorder


def fab_wall(ssh_config: Path, profile: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fabric", "-S", str(ssh_config), "-H", "vm", "provision",
                    "--config", str(profile)], cwd=PROJECT_ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


# The seed guide's steps (README of the hand-made setup), scripted as a person types them on a bare VM:
# packages, a venv with pip, the nginx site, ufw, Label Studio in a detached screen session; done when
# /health answers through nginx. Non-interactive only where a person would type (the admin's password).
GUIDE = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
sudo -E apt-get update -q
sudo -E apt-get install -y -q python3 python3-pip python3-venv nginx screen ufw
python3 -m venv ~/label-studio
~/label-studio/bin/pip install -q label-studio
sudo tee /etc/nginx/sites-available/label-studio >/dev/null <<'SITE'
server {
    listen 80;
    server_name _;
    location / {
        proxy_pass http://127.0.0.1:8080;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }
    location ~ /api/projects/.*/export {
        deny all;
    }
}
SITE
sudo ln -sf /etc/nginx/sites-available/label-studio /etc/nginx/sites-enabled/
sudo rm -f /etc/nginx/sites-enabled/default
sudo nginx -t
sudo systemctl reload nginx
sudo ufw allow OpenSSH
sudo ufw allow 'Nginx Full'
sudo ufw --force enable
cd ~ && LABEL_STUDIO_USERNAME=admin@example.com LABEL_STUDIO_PASSWORD=bench-password-1 \
    screen -dmS label-studio ~/label-studio/bin/label-studio start --no-browser
"""


def guide_wall(image: str, work: Path) -> float:
    """The guide's steps on a fresh VM of its own, until /health answers UP through nginx."""
    from dev.lsclient import wait_for_health

    vm = start_vm(image, make_key(work / "guide"))
    try:
        config = work / "guide_ssh_config"
        config.write_text(vm.ssh_config("vm", NOPASSWD_USER))
        start = time.perf_counter()
        subprocess.run(["ssh", "-F", str(config), "vm", "bash -s"], input=GUIDE.encode(), check=True,
                       stdout=subprocess.DEVNULL)
        wait_for_health(f"http://127.0.0.1:{vm.http_port}", timeout=900)
        return time.perf_counter() - start
    finally:
        vm.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.provision", description=__doc__.splitlines()[0])
    parser.add_argument("--no-guide", action="store_true", help="skip the guide's hand steps (one VM less)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lsvm-bench-"))
    guide = None
    if not args.no_guide:
        (work / "guide").mkdir()
        print("the guide's hand steps on a fresh VM ...", file=sys.stderr, flush=True)
        guide = guide_wall(build_image(), work)
    vm = start_vm(build_image(), make_key(work))
    try:
        ssh_config = work / "ssh_config"
        ssh_config.write_text(vm.ssh_config("vm", NOPASSWD_USER))
        profile = work / "bench.yaml"
        profile.write_text(f"public_url: http://127.0.0.1:{vm.http_port}\n"
                           "label_studio:\n  admin_email: admin@example.com\n")
        os.environ["LABEL_STUDIO_PASSWORD"] = "bench-password-1"
        env = dict(os.environ, HOME=str(work))

        # A fresh run happens once per VM: the instrumented in-process run is the fresh run, and its
        # wall time plus fab's own start-up (measured below) is what a user waits.
        print("fresh provision (in process, instrumented) ...", file=sys.stderr, flush=True)
        fresh, fresh_rec = provision_in_process(ssh_config, profile)
        print("no-op provision ...", file=sys.stderr, flush=True)
        noop_in_process, noop_rec = provision_in_process(ssh_config, profile)
        noop_walls = [fab_wall(ssh_config, profile, env) for _ in range(3)]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fabric", "--list"], cwd=PROJECT_ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        startup = time.perf_counter() - start
    finally:
        vm.stop()

    noop = statistics.median(noop_walls)
    fresh_wall = fresh + startup
    print()
    print("== provision benchmark (baselines: the guide's hand steps, and a fresh provision of a bare Debian 12 "
          "test VM) ==")
    print(f"fresh provision:            {fresh_wall:7.1f} s  ({fresh_rec.round_trips} remote commands + the sudo check)")
    if guide is not None:
        print(f"the guide's hand steps:     {guide:7.1f} s  (scripted, on another fresh VM; pip, screen, nginx, ufw)")
        print(f"fresh provision / guide:    {fresh_wall / guide:7.2f}x  (target <= 0.7: "
              f"{'met' if fresh_wall / guide <= 0.7 else 'NOT met'})")
    print(f"no-op re-provision (`fab`): {noop:7.2f} s  median of {len(noop_walls)}: "
          + ", ".join(f"{w:.2f}" for w in noop_walls))
    print(f"  of which in the task:     {noop_in_process:7.2f} s  ({noop_rec.round_trips} remote commands + the sudo check); "
          f"python + fab start-up {startup:.2f} s")
    print(f"no-op / fresh ratio:        {noop / fresh_wall:7.2%}   (target <= 5% and <= 3 s: "
          f"{'met' if noop <= 3 and noop / fresh_wall <= 0.05 else 'NOT met'})")
    print("where the fresh run's time goes (each change provision executed):")
    accounted = 0.0
    for name, seconds in sorted(fresh_rec.steps.items(), key=lambda kv: -kv[1]):
        accounted += seconds
        print(f"  {seconds:7.1f} s  {seconds / fresh:6.1%}  {name}")
    print(f"  {fresh - accounted:7.1f} s  {(fresh - accounted) / fresh:6.1%}  other (facts probe, sudo check, "
          "health through nginx, output)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
