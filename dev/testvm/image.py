"""Build the Debian "VM" images the tests (and `make demo`) run: Debian packages only, no registry.

debootstrap -> `docker import` gives a base image; a small Dockerfile on top adds systemd as PID 1,
sshd, the two login users and this network's CA bundle. Both images are tagged by a hash of their
recipe, so a second build is a no-op.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# The systems the suite proves the toolkit on: Debian suite -> image name.
SUITES = {"bookworm": "debian12", "trixie": "debian13"}
DEFAULT_SUITE = "bookworm"
BASE_PACKAGES = (
    "systemd,systemd-sysv,dbus,openssh-server,sudo,python3,ca-certificates,procps,iproute2"
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# Two login users, like the VMs people are handed: one with passwordless sudo, one whose sudo asks.
NOPASSWD_USER = "ops"
PASSWORD_USER = "student"
PASSWORD_USER_SUDO_PASSWORD = "student-sudo-pw"
UV_CACHE = "/var/cache/lsvm-shared/uv"

DOCKERFILE = f"""\
FROM {{base}}
ENV container=docker
RUN useradd -m -s /bin/bash {NOPASSWD_USER} \\
 && useradd -m -s /bin/bash -G sudo {PASSWORD_USER} \\
 && echo '{PASSWORD_USER}:{PASSWORD_USER_SUDO_PASSWORD}' | chpasswd \\
 && echo '{NOPASSWD_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/{NOPASSWD_USER} \\
 && chmod 0440 /etc/sudoers.d/{NOPASSWD_USER} \\
 && systemctl enable ssh \\
 && systemctl mask getty@tty1.service console-getty.service systemd-firstboot.service
# A fact of this test network (TLS is intercepted), not of the product: pip in the VM trusts it.
COPY ca-bundle.crt /usr/local/share/test-network-ca.crt
RUN printf '[global]\\ncert = /usr/local/share/test-network-ca.crt\\n' > /etc/pip.conf
# uv (provision installs Label Studio with it) keeps its cache where the tests can mount one shared by
# every VM of a run (machine.start_vm(package_cache=...)); without that mount it is a folder like any other.
RUN mkdir -p /etc/uv && printf 'cache-dir = "%s"\\n' '{UV_CACHE}' > /etc/uv/uv.toml
# systemd makes / a shared mount at boot on a real machine and skips that in a container; without it the
# credentials it hands to a service (LoadCredential=, mounted in a namespace of their own) never appear.
RUN printf '%s\\n' '[Unit]' 'Description=Shared mount propagation, as on a real machine' 'DefaultDependencies=no' \
      'Before=sysinit.target local-fs.target' '[Service]' 'Type=oneshot' 'ExecStart=/bin/mount --make-rshared /' \
      '[Install]' 'WantedBy=sysinit.target' > /etc/systemd/system/lsvm-shared-mounts.service \
 && systemctl enable lsvm-shared-mounts.service
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
"""


# The HTTPS tests' variant: Debian's pebble (a test ACME CA) inside the VM, from the same mirror.
TLS_DOCKERFILE = """\
FROM {base}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends pebble >/dev/null \\
 && rm -rf /var/lib/apt/lists/*
"""


def host_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The Debian mirror this machine uses (its package registry), else the public default."""
    try:
        match = re.search(r"^URIs:\s*(\S+)", sources.read_text(), re.MULTILINE)
    except OSError:
        return DEFAULT_MIRROR
    return match.group(1) if match else DEFAULT_MIRROR


def recipe_digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _ca_bundle() -> bytes:
    return HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""


def image_tags(suite: str = DEFAULT_SUITE, mirror: str | None = None) -> tuple[str, str]:
    """(base tag, final tag), each named by a hash of what goes into it."""
    mirror = mirror or host_mirror()
    name = SUITES[suite]
    base = f"lsvm-{name}-base:{recipe_digest(suite, BASE_PACKAGES, mirror)}"
    final = f"lsvm-{name}:{recipe_digest(base, DOCKERFILE, _ca_bundle())}"
    return base, final


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0
    )


def _log(message: str) -> None:
    print(f"[testvm] {message}", file=sys.stderr, flush=True)


def build_image(suite: str = DEFAULT_SUITE, mirror: str | None = None) -> str:
    """Build (or reuse) the test VM image of a Debian suite and return its tag."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r} (known: {', '.join(SUITES)})")
    mirror = mirror or host_mirror()
    base, final = image_tags(suite, mirror)
    if image_exists(final):
        return final
    if not image_exists(base):
        if not shutil.which("debootstrap"):
            raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
        with tempfile.TemporaryDirectory(prefix="lsvm-rootfs-") as rootfs:
            _log(f"debootstrap {suite} from {mirror} (about a minute)")
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                 suite, rootfs, mirror],
                check=True, stdout=subprocess.DEVNULL,
            )
            # Caches and host-specific files have no place in an image.
            for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(Path(rootfs, leftover), ignore_errors=True)
                Path(rootfs, leftover).mkdir(parents=True, exist_ok=True)
            _log(f"docker import -> {base}")
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["docker", "import", "-", base], stdin=tar.stdout, check=True,
                           stdout=subprocess.DEVNULL)
            if tar.wait() != 0:
                raise RuntimeError("tar of the debootstrap root failed")
    with tempfile.TemporaryDirectory(prefix="lsvm-image-") as context:
        Path(context, "Dockerfile").write_text(DOCKERFILE.format(base=base))
        Path(context, "ca-bundle.crt").write_bytes(_ca_bundle())
        _log(f"docker build -> {final}")
        subprocess.run(["docker", "build", "-q", "-t", final, context], check=True,
                       stdout=subprocess.DEVNULL)
    return final


def build_tls_image(suite: str = DEFAULT_SUITE, mirror: str | None = None, base: str | None = None) -> str:
    """The test VM image plus pebble (for the HTTPS tests), cached by a hash of both recipes. `base`: an
    image to add pebble to instead (the HTTPS tests: a VM committed right after its fresh provision)."""
    base = base or build_image(suite, mirror)
    tag = f"lsvm-{SUITES[suite]}-tls:{recipe_digest(base, TLS_DOCKERFILE)}"
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="lsvm-image-") as context:
        Path(context, "Dockerfile").write_text(TLS_DOCKERFILE.format(base=base))
        _log(f"docker build -> {tag} (pebble)")
        subprocess.run(["docker", "build", "-q", "-t", tag, context], check=True, stdout=subprocess.DEVNULL)
    return tag


if __name__ == "__main__":
    for name in sys.argv[1:] or [DEFAULT_SUITE]:
        print(build_image(name))
