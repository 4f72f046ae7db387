"""Previews at the router's seams that need no traffic: the JSON forms the control
API and the route table use for a route's preview, its pairing rules and its
pairs (files of older versions included), and HAProxy's refusal of previews."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from controller.adapters.router.control import (
    config_from_json,
    config_to_json,
    pair_from_json,
    pair_to_json,
    pairing_from_json,
    pairing_to_json,
)
from controller.adapters.router.haproxy import HAProxyRouter
from controller.core.traffic import Pair, PairingConfig, RouteConfig
from controller.errors import PermanentError


def test_a_route_config_with_a_preview_round_trips() -> None:
    config = RouteConfig("127.0.0.1:1", "127.0.0.1:2", 10, preview="127.0.0.1:3", preview_share=25)
    data = config_to_json(config)
    assert data["preview"] == "127.0.0.1:3"
    assert data["previewShare"] == 25
    assert config_from_json(data) == config


def test_a_route_config_of_an_older_version_has_no_preview() -> None:
    older = {"stable": "127.0.0.1:1", "canary": None, "weight": 0, "mirror": 0, "sticky": None}
    config = config_from_json(older)
    assert config == RouteConfig("127.0.0.1:1")
    assert config.preview is None
    assert config.preview_share == 0


def test_a_preview_must_be_an_address() -> None:
    with pytest.raises(ValueError, match="preview must be a string"):
        config_from_json({"stable": "127.0.0.1:1", "preview": 3})


def test_pairing_rules_round_trip() -> None:
    assert pairing_to_json(None) is None
    assert pairing_from_json(None) is None
    rules = PairingConfig(frozenset({"user", "card"}))
    assert pairing_to_json(rules) == {"sensitive": ["card", "user"]}
    assert pairing_from_json(pairing_to_json(rules)) == rules
    assert pairing_from_json({}) == PairingConfig()
    with pytest.raises(ValueError, match="sensitive"):
        pairing_from_json({"sensitive": "user"})


def test_a_pair_round_trips() -> None:
    pair = Pair(
        1700000000.5,
        {"x": 1, "deep": [{}]},
        200,
        0.012,
        {"score": 0.5},
        500,
        0.25,
        None,
        42,
    )
    data = pair_to_json(pair)
    assert data["stableStatus"] == 200
    assert data["previewAnswer"] is None
    assert pair_from_json(data) == pair


def test_haproxy_refuses_previews(tmp_path: Path) -> None:
    """Refused before anything runs: the binary is never started (any program that
    exists stands in for it)."""
    router = HAProxyRouter(tmp_path, binary=sys.executable)
    try:
        with pytest.raises(PermanentError, match="embedded router") as caught:
            router.configure("m", RouteConfig("127.0.0.1:1", preview="127.0.0.1:3"))
        assert caught.value.reason == "RouterFeatureUnsupported"
        with pytest.raises(PermanentError, match="embedded router") as caught:
            router.configure(
                "m", RouteConfig("127.0.0.1:1", preview="127.0.0.1:3", preview_share=0)
            )
        assert caught.value.reason == "RouterFeatureUnsupported"
        router.pair("m", None)  # nothing asked: fine
        with pytest.raises(PermanentError, match="embedded router") as caught:
            router.pair("m", PairingConfig(frozenset({"user"})))
        assert caught.value.reason == "RouterFeatureUnsupported"
        assert router.pairs("m") == []
        assert router.pid is None  # nothing was started
    finally:
        router.close()
