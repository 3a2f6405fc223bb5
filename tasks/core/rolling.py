"""A site's app VMs one at a time: taken out at the load balancer (drained: no new request, the open
ones finish), changed, proven (Label Studio answers and reads its database), put back, and only then the
next one. The balancer's own health checks say when a VM is back."""

from __future__ import annotations

import contextlib
from typing import Iterator

from tasks.core import ui
from tasks.core.commands import balancer as commands
from tasks.core.connect import Host
from tasks.core.errors import RemoteError
from tasks.core.site import FALL, RISE, ServerState, servers_from_stat

# How long the balancer's checks may take to see a VM back: RISE good checks, with room for a slow one.
BACK_TIMEOUT = 60


class Balancer:
    """HAProxy's runtime API on the balancer VM (root's socket)."""

    def __init__(self, host: Host):
        self.host = host

    def servers(self) -> dict[str, ServerState]:
        out = self.host.run(commands.runtime("show stat"), sudo=True, what="asking HAProxy for its servers")
        return servers_from_stat(out.stdout)

    def _set(self, server: str, state: str) -> None:
        out = self.host.run(commands.set_state(server, state), sudo=True, what=f"setting {server} to {state}")
        if out.stdout.strip():   # HAProxy answers an empty line when it took the command
            raise RemoteError(f"HAProxy on {self.host.alias} refused `{state}` for {server}: {out.stdout.strip()}")

    def drain(self, server: str, timeout: int) -> None:
        """No new request goes to `server`; returns once the open ones have finished."""
        self._set(server, "drain")
        with ui.err.status(f"draining {server}: waiting for its open requests to finish"):
            out = self.host.run(commands.wait_drained(server, timeout), sudo=True, check=False,
                                timeout=timeout + 30, what=f"draining {server}")
        if not out.ok:
            raise RemoteError(f"{server} still has {out.stdout.strip() or '?'} open request(s) after {timeout}s; "
                              "it stays drained (nothing new reaches it)",
                              hint="`fab site-status` shows it; `fab site-provision` puts it back once it is healthy")

    def ready(self, server: str, timeout: int = BACK_TIMEOUT) -> None:
        """`server` back in; returns once HAProxy's own checks see it UP."""
        self._set(server, "ready")
        self.wait_up(server, timeout)

    def any_up(self, servers: list[str], timeout: int = BACK_TIMEOUT) -> str | None:
        """The first of `servers` HAProxy's checks see up (waiting up to `timeout` for one); None: none is."""
        if not servers:
            return None
        with ui.err.status(f"waiting for the balancer's checks to see one of {', '.join(servers)} up"):
            out = self.host.run(commands.wait_any_up(servers, timeout), sudo=True, check=False,
                                timeout=timeout + 30, what="waiting for an app VM to be up")
        return out.stdout.strip() if out.ok else None

    def wait_up(self, server: str, timeout: int = BACK_TIMEOUT) -> None:
        with ui.err.status(f"waiting for the balancer's checks to see {server} up ({RISE} good checks)"):
            out = self.host.run(commands.wait_status(server, "UP", timeout), sudo=True, check=False,
                                timeout=timeout + 30, what=f"waiting for {server}")
        if not out.ok:
            raise RemoteError(f"the balancer does not see {server} up after {timeout}s (its state: "
                              f"{out.stdout.strip() or 'unknown'}; {FALL} failed checks take a VM out, {RISE} good "
                              "ones put it back)", hint="`fab site-status` shows each VM; "
                                                       "`fab -H <it> logs` shows why one fails its checks")


@contextlib.contextmanager
def taken_out(balancer: Balancer | None, server: str, timeout: int) -> Iterator[None]:
    """`server` drained for the body, put back after it; left drained when the body fails (the others
    keep serving). Without a balancer (none serves yet) the body just runs."""
    if balancer is None:
        yield
        return
    balancer.drain(server, timeout)
    ui.step(True, f"took {server} out of the balancer (drained)")
    try:
        yield
    except BaseException:
        ui.warn(f"{server} stays out of the balancer; the other app VMs serve")
        raise
    balancer.ready(server)
    ui.step(True, f"put {server} back: the balancer's checks see it up")
