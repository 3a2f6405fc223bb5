"""`make demo` / `make demo-down`: the test VM as a local playground.

    python -m dev.testvm up [--no-provision]   build the image, start the VM, provision Label Studio
    python -m dev.testvm down                  remove the VM and .demo/
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from .image import NOPASSWD_USER, build_image
from .machine import make_key, start_vm

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = PROJECT_ROOT / ".demo"
CONTAINER = "lsvm-demo"
ADMIN_EMAIL = "admin@example.com"


def up(provision: bool) -> int:
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("No Docker engine answers: start one (sudo dockerd) and try again.", file=sys.stderr)
        return 1
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True)
    DEMO_DIR.mkdir(mode=0o700, exist_ok=True)
    vm = start_vm(build_image(), make_key(DEMO_DIR), name=CONTAINER)
    ssh_config = DEMO_DIR / "ssh_config"
    ssh_config.write_text(vm.ssh_config("demo", NOPASSWD_USER))
    url = f"http://127.0.0.1:{vm.http_port}"
    profile = DEMO_DIR / "demo.yaml"
    profile.write_text(
        "# The demo VM: nginx's port 80 is published on this machine at the port below.\n"
        f"public_url: {url}\nlabel_studio:\n  admin_email: {ADMIN_EMAIL}\n"
    )
    fab = [sys.executable, "-m", "fabric", "-S", str(ssh_config), "-H", "demo"]
    print(f"VM {CONTAINER} is up: ssh -F {ssh_config} demo")
    if not provision:
        return 0
    password_file = DEMO_DIR / "admin-password"
    if not password_file.exists():
        password_file.write_text(secrets.token_urlsafe(12) + "\n")
        password_file.chmod(0o600)
    env = dict(os.environ, LSVM_CONFIG=str(profile),
               LABEL_STUDIO_PASSWORD=password_file.read_text().strip())
    result = subprocess.run([*fab, "provision"], cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        return result.returncode
    print(f"\nOpen {url} and log in as {ADMIN_EMAIL}; the password is in {password_file}.")
    print(f"Try the tasks: LSVM_CONFIG={profile} fab -S {ssh_config} -H demo status")
    print("Remove it with: make demo-down")
    return 0


def down() -> int:
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True)
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    print(f"removed {CONTAINER} and {DEMO_DIR}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.testvm")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the demo VM and provision it")
    up_parser.add_argument("--no-provision", action="store_true")
    sub.add_parser("down", help="remove the demo VM")
    args = parser.parse_args(argv)
    return up(not args.no_provision) if args.command == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
