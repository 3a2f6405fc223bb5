"""The operating systems the toolkit is proven on, and what it says about the others."""

from __future__ import annotations

# Each of these runs the whole integration suite (dev/testvm builds both from Debian packages).
TESTED = {("debian", "12"): "Debian 12 (bookworm)", ("debian", "13"): "Debian 13 (trixie)"}
# Same packages, systemd, Python >= 3.10 and runuser; their 0750 homes are covered by a test on
# Debian 12 with that mode. Not run by the suite, so not promised.
EXPECTED = {("ubuntu", "22.04"): "Ubuntu 22.04", ("ubuntu", "24.04"): "Ubuntu 24.04"}


def support_warning(os_id: str, version_id: str) -> str | None:
    """None on a tested system, else one sentence for the user."""
    key = (os_id.strip().lower(), version_id.strip())
    if key in TESTED:
        return None
    tested = " and ".join(TESTED.values())
    if key in EXPECTED:
        return f"{EXPECTED[key]} is expected to work but is not tested; the toolkit is tested on {tested}"
    name = f"{os_id} {version_id}".strip() or "this system"
    return f"{name} is not a system this toolkit is tested on ({tested}); provision may fail or differ"
