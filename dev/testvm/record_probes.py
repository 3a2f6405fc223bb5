"""Record the provision probe of a real bare and a real provisioned test VM into tests/unit/data/, the
facts the unit tests plan against (tests/unit/samples.py, tests/unit/conftest.py). Run again whenever the probe or the server
layout changes:  python -m dev.testvm.record_probes  (needs Docker, like the integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dev.testvm.image import build_image
from dev.testvm.machine import NOPASSWD_USER, make_key, start_vm

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA = PROJECT_ROOT / "tests" / "unit" / "data"
# The profile of tests/unit/samples.py: PROFILE. The URL need not answer; it is what the files say.
PUBLIC_URL = "http://127.0.0.1:59503"
ADMIN_EMAIL = "admin@example.com"


def probe(vm) -> str:
    """The provision probe exactly as provision runs it (as root), with the unit tests' profile."""
    sys.path.insert(0, str(PROJECT_ROOT))
    from tasks.core.commands.probes import provision_probe
    from tasks.core.profile import Profile
    script = provision_probe(Profile(host="vm", address="127.0.0.1", public_url=PUBLIC_URL), ADMIN_EMAIL)
    return vm.exec("sh -s", input=script.encode()).stdout.decode()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        vm = start_vm(build_image("bookworm"), make_key(home))
        try:
            (DATA / "provision_probe_bare.txt").write_text(probe(vm))
            profile = home / "vm.yaml"
            profile.write_text(f"public_url: {PUBLIC_URL}\nlabel_studio:\n  admin_email: {ADMIN_EMAIL}\n")
            (home / "ssh_config").write_text(vm.ssh_config("vm", NOPASSWD_USER))
            env = {**os.environ, "HOME": str(home), "LSVM_CONFIG": str(profile),
                   "LABEL_STUDIO_PASSWORD": "first-admin-pw-1"}
            subprocess.run([sys.executable, "-m", "fabric", "-S", str(home / "ssh_config"), "-H", "vm", "provision"],
                           cwd=PROJECT_ROOT, env=env, check=True)
            (DATA / "provision_probe_provisioned.txt").write_text(probe(vm))
        finally:
            vm.stop()
    print(f"recorded {DATA}/provision_probe_bare.txt and provision_probe_provisioned.txt")


if __name__ == "__main__":
    main()
