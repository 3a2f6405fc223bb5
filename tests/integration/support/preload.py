"""A library that marks every process it is loaded into, for the tests of what root runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dev.testvm.machine import NOPASSWD_USER, TestVM

# A library that, loaded into any process, leaves a mark in a user's home named after its effective uid
# (/home/<user>/preload-ran-as-<uid>): the tests of adopt's way back look for a mark of root (0).
PRELOAD_SOURCE = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    char path[128];
    snprintf(path, sizeof path, "/home/%s/preload-ran-as-%d", MARK_USER, (int)geteuid());
    FILE *f = fopen(path, "a");
    if (f) { fputs("loaded\n", f); fclose(f); }
}
"""


def preload_library(vm: TestVM, workdir: Path, user: str = NOPASSWD_USER) -> str:
    """PRELOAD_SOURCE built here (the VM has no compiler) and put in `user`'s home, where its marks go."""
    source, library = workdir / "preload.c", workdir / "preload.so"
    source.write_text(PRELOAD_SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", f"-DMARK_USER=\"{user}\"", "-o", str(library), str(source)],
                   check=True, capture_output=True)
    target = f"/home/{user}/preload.so"
    vm.exec(f"cat > {target} && chown {user}: {target} && chmod 0755 {target}", input=library.read_bytes())
    return target
