"""Options are validated once, where they are declared (issue 12 item 5 regressions)."""

from __future__ import annotations

import pytest

from mailvm.config import MAX_GUEST_MEM_MIB, ConfigError, parse_config
from mailvm.kinds import DETONATE_KINDS


def test_guest_memory_above_the_backend_limit_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        parse_config({"pool": {"guest_mem_mib": 8192}}, "mailvm.toml")
    assert err.value.key == "pool.guest_mem_mib" and str(MAX_GUEST_MEM_MIB) in err.value.problem
    assert parse_config({"pool": {"guest_mem_mib": MAX_GUEST_MEM_MIB}}).pool.guest_mem_mib == MAX_GUEST_MEM_MIB


def test_pool_detonate_kinds_are_checked():
    with pytest.raises(ConfigError) as err:
        parse_config({"pool": {"detonate_kinds": ["exe", "pfd"]}}, "mailvm.toml")
    assert err.value.key == "pool.detonate_kinds" and "'pfd'" in err.value.problem
    with pytest.raises(ConfigError):
        parse_config({"pool": {"detonate_kinds": ["pdf", "pdf"]}})
    assert parse_config({"pool": {"detonate_kinds": []}}).pool.detonate_kinds == []
    assert tuple(parse_config({}).pool.detonate_kinds) == DETONATE_KINDS


def test_qemu_backend_uses_the_same_bound():
    from mailvm.vmpool.backends import qemu

    assert qemu.MAX_MEM_MIB == MAX_GUEST_MEM_MIB
