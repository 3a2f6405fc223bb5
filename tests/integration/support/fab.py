"""`fab` run the way a user runs it: a subprocess with an ssh_config of its own (never the developer's
~/.ssh/config) and HOME in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dev.testvm.machine import NOPASSWD_USER, PASSWORD_USER, TestVM

PROJECT_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Fab:
    """Runs `fab` the way a user does, against the test VM, through our own ssh_config."""

    vm: TestVM
    home: Path
    env: dict = field(default_factory=dict)

    def ssh_config(self) -> Path:
        path = self.home / "ssh_config"
        path.write_text(
            self.vm.ssh_config("vm", NOPASSWD_USER)
            + self.vm.ssh_config("vm-student", PASSWORD_USER)
        )
        return path

    def __call__(self, *args: str, host: str | None = "vm", env: dict | None = None,
                 input: str | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run(self._command(args, host), cwd=PROJECT_ROOT, env=self._environment(env),
                                capture_output=True, text=True, input=input, timeout=timeout)
        _record(args, time.monotonic() - started)
        return result

    def popen(self, *args: str, host: str | None = "vm", env: dict | None = None,
              merge_stderr: bool = False) -> subprocess.Popen:
        """`fab` started in the background, for what a test does to the VM while it runs."""
        return subprocess.Popen(self._command(args, host), cwd=PROJECT_ROOT, env=self._environment(env),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                                text=True)

    def _command(self, args: tuple[str, ...], host: str | None) -> list[str]:
        return [sys.executable, "-m", "fabric", "-S", str(self.ssh_config()), *(["-H", host] if host else []),
                *args]

    def _environment(self, env: dict | None) -> dict:
        full_env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("SSH_", "FABRIC_", "LSVM_", "LABEL_STUDIO_"))
        }
        # TMPDIR in the test's home: what a killed `fab` leaves (tests kill it on purpose) goes with it.
        tmp = self.home / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        full_env.update(HOME=str(self.home), LSVM_BACKUPS_DIR=str(self.home / "backups"), COLUMNS="200",
                        TMPDIR=str(tmp))
        full_env.update(self.env)
        full_env.update(env or {})
        return full_env


def _record(args: tuple[str, ...], seconds: float) -> None:
    """With LSVM_FAB_TIMES=<file>, one line per `fab` run: seconds, the test running, the task (where CI's
    time goes)."""
    log = os.environ.get("LSVM_FAB_TIMES")
    if log:
        test = os.environ.get("PYTEST_CURRENT_TEST", "-").split(" ")[0]
        with open(log, "a") as handle:
            handle.write(f"{seconds:.1f}\t{test}\t{' '.join(args)[:120]}\n")
