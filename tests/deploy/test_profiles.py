"""Device profiles: detect, save/load through the store and the CLI, and fit checks."""

from __future__ import annotations

import pytest

from slmops.deploy.profiles import DeviceProfile, check_profile, detect_profile, load_profile, save_profile
from slmops.errors import ConfigError, StoreError
from slmops.units import parse_duration, parse_size


def test_units() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("2GiB") == 2 * 1024**3 and parse_size("123") == 123
    assert parse_duration("10m") == 600 and parse_duration("500ms") == 0.5 and parse_duration(3) == 3.0
    with pytest.raises(ConfigError, match="--max-size"):
        parse_size("lots", flag="--max-size")


def test_detect_save_load_and_check(store) -> None:
    prof = detect_profile("here")
    assert prof.machine["cores"] >= 1 and prof.max_rss_bytes and prof.max_rss_bytes < prof.machine["memory_bytes"]
    save_profile(store, DeviceProfile(name="edge", max_size_bytes=1000, max_rss_bytes=10_000, min_tokens_per_s=5, formats=["gguf"]))
    edge = load_profile(store, "edge")
    assert check_profile(edge, format="gguf", size_bytes=900, peak_rss_bytes=9000, tokens_per_s=6) == []
    reasons = check_profile(edge, format="ort-genai", size_bytes=2000, peak_rss_bytes=20_000, tokens_per_s=1)
    assert len(reasons) == 4 and "format ort-genai not allowed" in reasons[0]
    assert reasons[1:] == ["size_bytes = 2000, needs <= 1000", "peak_rss_bytes = 20000, needs <= 10000", "decode_tokens_per_s = 1, needs >= 5"]
    assert check_profile(edge, format="gguf", size_bytes=2000) == ["size_bytes = 2000, needs <= 1000"], "what was not measured is not held against it"
    with pytest.raises(StoreError, match="saved profiles: edge"):
        load_profile(store, "nope")
    with pytest.raises(ConfigError, match="unknown format"):
        DeviceProfile(name="x", formats=["zip"])


def test_cli_profiles(cli) -> None:
    r = cli("profile", "create", "pi", "--max-rss", "1GB", "--max-size", "300MB", "--formats", "gguf", "--json")
    assert r.code == 0, r.err
    assert r.json["max_size_bytes"] == 300_000_000
    assert cli("profile", "detect", "--save", "--json").json["name"] == "this-machine"
    assert [p["name"] for p in cli("profile", "ls", "--json").json] == ["pi", "this-machine"]
    assert cli("profile", "rm", "pi", "--json").json == {"removed": True}
    assert cli("profile", "show", "pi").code == 1


def test_apply_profile_narrows_an_optimize_config() -> None:
    from slmops.deploy.profiles import apply_profile

    edge = DeviceProfile(name="edge", max_size_bytes=50_000_000, min_tokens_per_s=20, formats=["gguf"])
    cfg = apply_profile({"targets": ["onnx:int4", "gguf:q4_k_m", "gguf:q8_0"], "min_tokens_per_s": 5}, edge)
    assert cfg == {"targets": ["gguf:q4_k_m", "gguf:q8_0"], "max_size_bytes": 50_000_000, "min_tokens_per_s": 5}
    with pytest.raises(ConfigError, match="allows none of the targets"):
        apply_profile({"targets": ["onnx:int4"]}, edge)
    # every limit of a profile is a gate the optimizer takes (peak memory too)
    pi = DeviceProfile(name="pi", max_rss_bytes=2_000_000_000, formats=["gguf"])
    from slmops.export.optimize import OptimizeConfig

    assert OptimizeConfig(**apply_profile({"targets": ["gguf:q8_0"]}, pi)).max_rss_bytes == 2_000_000_000


def test_optimize_cli_refuses_targets_outside_the_profile(cli) -> None:
    assert cli("profile", "create", "ggufonly", "--formats", "gguf").code == 0
    r = cli("optimize", "nothing", "--data", "nothing", "--targets", "onnx:int4", "--profile", "ggufonly")
    assert r.code == 1 and "allows none of the targets" in r.err
