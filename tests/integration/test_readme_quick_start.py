"""The README's quick start, as a new user runs it: its code blocks are read from README.md and run in order
on this machine in a fresh HOME (clone, venv, `pip install -e .`, the ssh_config entry, `ssh vm` once to
accept the host key, the profile with the admin's email, `fab config`, `provision --dry-run`, `provision`,
`status`) against a test VM. What the README leaves to the user is filled in here and nothing else: the
clone's source, the VM's address, the admin's email. The server it ends with serves Label Studio and
reads its database (`status` says UP). So the README cannot drift from what works.

The VM is a clone of the freshly provisioned one with Label Studio stopped and its SECRET_KEY gone (CI time:
a provision from bare Debian is test_provision.py's); the quick start's provision brings it to the example
profile (its settings, a new key, the service started). One Debian release."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from dev.testvm.image import NOPASSWD_USER
from tests.integration.support.machines import ADMIN_EMAIL, ADMIN_PASSWORD, start_clone

pytestmark = pytest.mark.one_release("bookworm")

ROOT = Path(__file__).resolve().parents[2]


def quick_start_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the README's "Quick start" section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w*)\n(.*?)```", section, re.S)


def test_the_quick_start_has_the_steps_a_new_user_needs():
    blocks = quick_start_blocks()
    shell = "\n".join(text for lang, text in blocks if lang == "bash")
    for step in ("python3 -m venv .venv", "pip install -e .", "cp configs/example.yaml configs/vm.yaml",
                 "admin_email", "fab -H vm provision --dry-run", "fab -H vm provision", "fab -H vm status"):
        assert step in shell, step
    assert any(lang == "" and text.lstrip().startswith("Host vm") for lang, text in blocks)


def test_the_quick_start_ends_with_a_working_server(provisioned, tmp_path):
    vm = start_clone(provisioned.image, tmp_path / "vm")
    try:
        home = tmp_path / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        work = tmp_path / "work"
        work.mkdir()
        blocks = quick_start_blocks()
        setup, entry, steps = [text for _, text in blocks]
        # The ssh_config entry as the README shows it, with this VM's address and the test's key.
        config = (entry.replace("labels.example.org", "127.0.0.1").replace("alice", NOPASSWD_USER)
                  + f"  Port {vm.ssh_port}\n  IdentityFile {vm.key_file}\n  IdentitiesOnly yes\n")
        assert config.startswith("Host vm\n")
        (home / ".ssh" / "config").write_text(config)
        script = "\n".join([
            "set -e",
            setup.replace("<this repository>", str(ROOT)),
            # "log in once with `ssh vm` to check and accept its host key"
            # (OpenSSH reads the passwd entry's home, not $HOME: the test's HOME is named for it.)
            'ssh -F "$HOME/.ssh/config" -o UserKnownHostsFile="$HOME/.ssh/known_hosts" '
            "-o StrictHostKeyChecking=accept-new -o BatchMode=yes vm true",
            # "then set label_studio.admin_email: you@example.org"
            *[line if not line.startswith("cp configs/example.yaml") else
              line.split("#")[0] + f"\nsed -i 's/^  admin_email: null/  admin_email: {ADMIN_EMAIL}/' configs/vm.yaml"
              for line in steps.splitlines()],
        ])
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SSH_", "FABRIC_", "LSVM_", "LABEL_STUDIO_", "VIRTUAL_ENV"))}
        env.update(HOME=str(home), LABEL_STUDIO_PASSWORD=ADMIN_PASSWORD, COLUMNS="200",
                   PATH=":".join(p for p in env.get("PATH", "").split(":") if ".venv" not in p))
        run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=2400)
        out = run.stdout + run.stderr
        assert run.returncode == 0, out[-6000:]
        assert "admin_email" in out and f"{ADMIN_EMAIL}" in out            # fab config showed the setting
        assert "plan only: nothing on the server changes" in out            # the dry run
        assert "made Label Studio's SECRET_KEY" in out                      # the provision did its work
        assert re.search(r"health \(via nginx\)\s+UP", out), out[-4000:]    # status: our instance reads its DB
        assert (work / "labelstudio-vm" / ".venv" / "bin" / "fab").exists()
    finally:
        vm.stop()
