"""pixbin.params: one way to build parameter dataclasses from config mappings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pixbin.errors import ConfigError
from pixbin.params import check_keys, field_names, params_from_dict


@dataclass(frozen=True)
class P:
    rate_hz: float = 1.0
    chunk_samples: int = 10


def test_params_from_dict_builds_and_defaults():
    assert params_from_dict(P, {"rate_hz": 2.0}, what="test parameter") == P(rate_hz=2.0)
    assert params_from_dict(P, None, what="test parameter") == P()
    assert field_names(P) == ["rate_hz", "chunk_samples"]


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        params_from_dict(P, {"rate": 2.0, "rate_hz": 3.0}, what="test parameter")
    msg = str(info.value)
    assert "unknown test parameter(s) ['rate']" in msg
    assert "valid test parameters: ['chunk_samples', 'rate_hz']" in msg


def test_check_keys_names_where_and_refuses_non_mappings():
    with pytest.raises(ConfigError, match=r"^cfg.yaml: unknown key\(s\) \['x'\]; valid keys: \['a', 'b'\]$"):
        check_keys({"x": 1}, ["a", "b"], what="key", where="cfg.yaml")
    with pytest.raises(ConfigError, match=r"cfg.yaml: expected a mapping with keys \['a'\]; found 5"):
        check_keys(5, ["a"], what="key", where="cfg.yaml")
    check_keys({"a": 1}, ["a", "b"], what="key")
