"""Token-bucket rate limits per key (a source address), in process, in bounded memory.

Each key has a bucket of ``burst`` tokens refilled at ``rate`` tokens per second;
a request takes one token or is refused with the time until the next one. The
buckets live in an LRU of at most ``max_keys`` entries, so a flood from many
addresses costs at most that many small tuples (about 200 bytes each): when the
table is full the least recently seen address is forgotten, and comes back with
a full bucket. That is the price of the bound (a flood from more than
``max_keys`` addresses at once is not held back per address), and the right
trade for a limiter whose job is to keep one noisy or hostile client from
starving the rest.

Used by the API's unauthenticated routes (api/ratelimit.py) and the TFTP
per-MAC config hook (conductor/boot_service.py); it imports nothing of prov's,
so every layer may use it. ``rate`` <= 0 turns a limiter off; addresses in an
``exempt`` network are never limited (none by default: loopback is limited too).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable


class RateLimiter:
    """Buckets keyed by source address; ``check`` is thread-safe and O(1)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000, exempt: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_keys = max(1, int(max_keys))
        self.exempt = tuple(ipaddress.ip_network(n, strict=False) for n in exempt)
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens left, when they were counted); the most recently seen key is last
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def is_exempt(self, key: str) -> bool:
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(ip in net for net in self.exempt)

    def check(self, key: str) -> float:
        """0.0 if ``key`` may go ahead now (one token taken), else the seconds until it may."""
        if not self.enabled or self.is_exempt(key):
            return 0.0
        now = self._clock()
        with self._lock:
            entry = self._buckets.pop(key, None)
            if entry is None:
                tokens = float(self.burst)
                while len(self._buckets) >= self.max_keys:
                    self._buckets.popitem(last=False)  # the least recently seen address
            else:
                tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
