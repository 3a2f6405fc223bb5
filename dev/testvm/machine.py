"""Start the test VM image as a systemd "VM" through testcontainers and wait until SSH really answers.

Ports 22 and 80 are published on 127.0.0.1 only. Readiness is polled on real signals:
`systemctl is-system-running`, then a complete SSH handshake with the test key.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .image import NOPASSWD_USER, PASSWORD_USER, PASSWORD_USER_SUDO_PASSWORD, UV_CACHE

# The reaper image cannot be pulled here (no registry): we remove our own containers.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer  # noqa: E402

READY_TIMEOUT = 120.0

_removals: list[subprocess.Popen] = []      # containers being removed (TestVM.stop)
_images_to_remove: list[str] = []          # removed once no container of theirs is left (remove_image_later)


def remove_image_later(tag: str) -> None:
    """`docker image rm` of an image (a committed VM) once every container removal started has ended."""
    _images_to_remove.append(tag)


@atexit.register
def _finish_removals() -> None:
    for removal in _removals:
        removal.wait()
    for tag in _images_to_remove:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)


@dataclass
class TestVM:
    container: DockerContainer
    key_file: Path
    ssh_port: int
    http_port: int

    @property
    def id(self) -> str:
        return self.container.get_wrapped_container().id

    def exec(self, command: str, *, check: bool = True, input: bytes | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a command inside the VM as root, bypassing SSH (for test set-up and inspection)."""
        interactive = ["-i"] if input is not None else []
        result = subprocess.run(
            ["docker", "exec", *interactive, self.id, "sh", "-c", command],
            input=input, capture_output=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in VM: {command!r} exited {result.returncode}: {result.stderr.decode(errors='replace')}"
            )
        return result

    def popen(self, command: str) -> subprocess.Popen:
        """A command inside the VM as root, left running (its stdout a pipe). Killing the Popen only ends
        `docker exec` here: end the process in the VM with exec("pkill ...")."""
        return subprocess.Popen(["docker", "exec", self.id, "sh", "-c", command], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)

    def ssh_config(self, alias: str = "vm", user: str = NOPASSWD_USER) -> str:
        return (
            f"Host {alias}\n"
            f"  HostName 127.0.0.1\n"
            f"  Port {self.ssh_port}\n"
            f"  User {user}\n"
            f"  IdentityFile {self.key_file}\n"
            f"  IdentitiesOnly yes\n"
            f"  StrictHostKeyChecking no\n"
            f"  UserKnownHostsFile /dev/null\n"
        )

    def wait_for_systemd(self, timeout: float = READY_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            result = self.exec("systemctl is-system-running", check=False)
            state = result.stdout.decode().strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)  # poll interval between real readiness checks, not a readiness wait
        raise TimeoutError(f"systemd in the test VM did not come up (last state: {state!r})")

    def wait_for_ssh(self, user: str = NOPASSWD_USER, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect("127.0.0.1", port=self.ssh_port, username=user,
                               key_filename=str(self.key_file), look_for_keys=False,
                               allow_agent=False, timeout=5, banner_timeout=5, auth_timeout=5)
                _, stdout, _ = client.exec_command("true")
                if stdout.channel.recv_exit_status() == 0:
                    return
            except (paramiko.SSHException, OSError) as exc:
                last = exc
            finally:
                client.close()
            time.sleep(0.5)
        raise TimeoutError(f"no SSH login to the test VM within {timeout:.0f}s: {last}")

    def published_port(self, container_port: int) -> int:
        return int(self.container.get_exposed_port(container_port))

    def refresh_ports(self) -> None:
        """Ports change on `docker restart`; read them again."""
        self.container.get_wrapped_container().reload()
        self.ssh_port = self.published_port(22)
        self.http_port = self.published_port(80)

    def restart(self) -> None:
        """`docker restart`: the VM reboots (systemd stops and starts everything)."""
        subprocess.run(["docker", "restart", self.id], check=True, capture_output=True, timeout=180)
        self.refresh_ports()
        self.wait_for_systemd()

    def stop(self) -> None:
        """Remove the VM in the background: deleting a container that holds Label Studio's venvs is
        seconds of disk work nobody needs to wait for (this process waits for it before it exits)."""
        try:
            _removals.append(subprocess.Popen(["docker", "rm", "-f", "-v", self.id], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
        except Exception:  # noqa: BLE001 - teardown must not hide the test's own result
            pass


def make_key(directory: Path) -> Path:
    """The test login key in `directory` (made 0700 if new), generated once."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = directory / "id_ed25519"
    if not key_file.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "lsvm-test",
                        "-f", str(key_file)], check=True)
    return key_file


def free_port() -> int:
    """A port free on loopback now; pinned so URLs stay the same across `docker restart`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vm(image: str, key_file: Path, name: str | None = None, extra_ports: tuple[int, ...] = (),
             package_cache: Path | None = None) -> TestVM:
    """`package_cache`: a folder here that every VM started with it uses as uv's cache (the tests: a fresh
    provision downloads Label Studio's ~160 packages once per run, not once per VM)."""
    container = (
        DockerContainer(image)
        .with_kwargs(
            # SYS_PTRACE: root on a real VM reads every process's /proc/PID/fd (who holds a port).
            cap_add=["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"],
            security_opt=["seccomp=unconfined"],
            cgroupns="host",
            hostname="labelvm",
        )
        .with_volume_mapping("/sys/fs/cgroup", "/sys/fs/cgroup", "rw")
        .with_tmpfs_mount("/run")
        .with_tmpfs_mount("/run/lock")
    )
    if package_cache is not None:
        package_cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        container = container.with_volume_mapping(str(package_cache), UV_CACHE, "rw")
    if name:
        container = container.with_name(name)
    # Published on loopback only, never on all interfaces.
    container.ports["22/tcp"] = ("127.0.0.1", free_port())
    container.ports["80/tcp"] = ("127.0.0.1", free_port())
    for port in extra_ports:
        container.ports[f"{port}/tcp"] = ("127.0.0.1", free_port())
    container.start()
    vm = TestVM(container=container, key_file=key_file, ssh_port=0, http_port=0)
    try:
        vm.refresh_ports()
        vm.wait_for_systemd()
        public_key = Path(f"{key_file}.pub").read_bytes()
        for user in (NOPASSWD_USER, PASSWORD_USER):
            vm.exec(
                f"install -d -m 700 -o {user} -g {user} /home/{user}/.ssh && "
                f"cat > /home/{user}/.ssh/authorized_keys && "
                f"chown {user}:{user} /home/{user}/.ssh/authorized_keys && "
                f"chmod 600 /home/{user}/.ssh/authorized_keys",
                input=public_key,
            )
        vm.wait_for_ssh(NOPASSWD_USER)
        vm.wait_for_ssh(PASSWORD_USER)
    except BaseException:
        vm.stop()
        raise
    return vm


__all__ = ["TestVM", "start_vm", "make_key", "NOPASSWD_USER", "PASSWORD_USER",
           "PASSWORD_USER_SUDO_PASSWORD"]
