"""Every bound of the engine in one value handed in (as uvicorn's Config holds
its limits), so a test can run the real engine in-process with tiny limits and
a deadline test takes milliseconds, not the ten seconds a constant would cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    head: float = 10.0  # from a head's first byte (or a new connection's accept) to its end
    idle: float = 60.0  # a kept-alive connection with nothing to say
    body: float = 60.0  # a request body that stops arriving
    linger: float = 2.0  # reading what a refused client still sends, before closing
    linger_bytes: int = 1 << 20
    upstream: float = 300.0  # --timeout: the upstream's whole answer head, then each wait for more body
    connections: int = 512  # open client connections; at the cap the longest-waiting idle one is closed
    in_flight: int = 128  # --max-concurrency: requests relayed at once; more get 503
    # Request bodies held whole for a policy that reads them (the gate's models=), all connections
    # together: each may hold one up to 32 MiB, and 512 of them would be 16 GiB. Past this: 503.
    held_bodies: int = 256 << 20
