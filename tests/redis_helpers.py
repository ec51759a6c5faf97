"""A private redis-server on a free loopback port (tests start their own; never a system one).
The implementation is shared with the benchmarks: mailvm.lab.redis."""

from __future__ import annotations

from mailvm.lab.common import free_port
from mailvm.lab.redis import REDIS_SERVER, RedisServer

__all__ = ["REDIS_SERVER", "RedisServer", "free_port"]
