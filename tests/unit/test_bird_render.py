"""Golden files for the rendered BIRD include and managed bird.conf.

Each golden is also fed to the real BIRD parser (``bird -p -c``, parse only,
no root, no sockets), so a golden cannot drift into something BIRD refuses.
Regenerate after an intended change with ``FLOCK_UPDATE_GOLDEN=1 pytest
tests/unit/test_bird_render.py`` and review the diff.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.bird_render import PrefixSet, quote, render_include, render_managed_config
from reconciler.node_config import BgpSettings, BirdSettings, parse_node_config

GOLDEN = Path(__file__).parent / "golden" / "bird"
UPDATE = os.environ.get("FLOCK_UPDATE_GOLDEN") == "1"
BIRD = shutil.which("bird") or ("/usr/sbin/bird" if os.path.exists("/usr/sbin/bird") else None)

net = ipaddress.ip_network


@functools.cache
def ten_thousand_prefixes() -> tuple:
    """5,000 IPv4 /32 (10.x.y.1) and 5,000 IPv6 /128 (2001:db8:0:N::53), shuffled with a fixed seed."""
    base4 = int(ipaddress.IPv4Address("10.0.0.1"))
    base6 = int(ipaddress.IPv6Address("2001:db8::53"))
    prefixes = [ipaddress.IPv4Network((base4 + (i << 8), 32)) for i in range(5000)]
    prefixes += [ipaddress.IPv6Network((base6 + (i << 64), 128)) for i in range(5000)]
    random.Random(7).shuffle(prefixes)
    return tuple(prefixes)


INCLUDE_CASES = {
    "include_empty.conf": [],
    "include_v4.conf": [net("192.0.2.53/32"), net("192.0.2.10/32"), net("198.51.100.0/24")],
    "include_v6.conf": [net("2001:db8:a::53/128"), net("2001:db8:a::10/128")],
    # Unsorted, with duplicates: the output must be sorted and each prefix once.
    "include_mixed.conf": [
        net("2001:db8:a::53/128"),
        net("192.0.2.53/32"),
        net("192.0.2.53/32"),
        net("10.0.0.1/32"),
        net("2001:db8:a::53/128"),
        net("2001:db8::1/128"),
    ],
}


def typical_bgp() -> BgpSettings:
    """Two upstream routers, as in the operator docs: one with BFD and a
    password on a shared /31, one multihop route reflector with communities."""
    config = parse_node_config(
        {
            "nodeName": "node-a",
            "pools": ["192.0.2.0/24"],
            "bird": {"mode": "managed", "includeFile": "/etc/bird/flock-anycast.conf"},
            "bgp": {
                "routerId": "192.0.2.11",
                "localAS": 65011,
                "communities": ["65000:53", "65000:100"],
                "largeCommunities": ["65000:1:53"],
                "holdTime": 9,
                "keepaliveTime": 3,
                "connectRetryTime": 5,
                "neighbors": [
                    {
                        "name": "tor1",
                        "address": "198.51.100.0",
                        "as": 65000,
                        "password": "s3cret-key",
                        "bfd": True,
                        "sourceAddress": "198.51.100.1",
                        "families": ["ipv4"],
                    },
                    {
                        "name": "rr_far",
                        "address": "2001:db8:ffff::1",
                        "as": 65000,
                        "multihop": 4,
                        "bfd": True,
                        "sourceAddress": "2001:db8:1::11",
                        "nextHopIPv4": "192.0.2.11",
                    },
                ],
            },
        }
    )
    assert config.bgp is not None
    return config.bgp


def v4_over_v6_bgp() -> BgpSettings:
    """One IPv6 link-local-style session carrying both families with RFC 8950
    extended next hop, plus the fast lab timers."""
    return BgpSettings.model_validate(
        {
            "routerId": "192.0.2.12",
            "localAS": 4200000012,
            "holdTime": 3,
            "keepaliveTime": 1,
            "connectRetryTime": 1,
            "connectDelayTime": 1,
            "errorWaitTime": [1, 2],
            "neighbors": [
                {
                    "name": "uplink",
                    "address": "2001:db8:12::1",
                    "as": 65000,
                    "interface": "eth0",
                    "extendedNextHop": True,
                }
            ],
        }
    )


MANAGED_CASES = {
    "managed_two_neighbors.conf": typical_bgp,
    "managed_extended_next_hop.conf": v4_over_v6_bgp,
}

MANAGED_SETTINGS = BirdSettings(mode="managed", include_file="/etc/bird/flock-anycast.conf")


def check_golden(name: str, rendered: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rendered)
    assert path.exists(), f"missing golden {path}; run with FLOCK_UPDATE_GOLDEN=1"
    assert rendered == path.read_bytes(), f"{name} differs from its golden file"


def bird_parse(tmp_path: Path, config_text: str) -> subprocess.CompletedProcess:
    if BIRD is None:
        pytest.skip("bird (bird2) is not installed")
    config = tmp_path / "bird.conf"
    config.write_text(config_text)
    return subprocess.run([BIRD, "-p", "-c", str(config)], capture_output=True, text=True, timeout=30)


def wrapper_config(include: Path) -> str:
    """A minimal operator bird.conf in include mode, with the documented export filters."""
    return (
        "router id 192.0.2.1;\n"
        "protocol device {}\n"
        f'include "{include}";\n'
        "protocol bgp upstream {\n"
        "  local as 65001; neighbor 198.51.100.2 as 65002;\n"
        '  ipv4 { import none; export where proto = "flock_anycast4"; };\n'
        '  ipv6 { import none; export where proto = "flock_anycast6"; };\n'
        "}\n"
    )


# --- include ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(INCLUDE_CASES))
def test_include_matches_golden(name):
    check_golden(name, render_include(INCLUDE_CASES[name]))


@pytest.mark.parametrize("name", sorted(INCLUDE_CASES))
def test_include_golden_parses_in_bird(tmp_path, name):
    result = bird_parse(tmp_path, wrapper_config(GOLDEN / name))
    assert result.returncode == 0, result.stderr


def test_include_empty_set_keeps_both_protocol_blocks():
    text = render_include([]).decode()
    assert "protocol static flock_anycast4 {\n  ipv4;\n}\n" in text
    assert "protocol static flock_anycast6 {\n  ipv6;\n}\n" in text
    assert "route" not in text.replace("routes", "")


def test_include_is_deduplicated_sorted_and_order_independent():
    forward = render_include(INCLUDE_CASES["include_mixed.conf"])
    backward = render_include(list(reversed(INCLUDE_CASES["include_mixed.conf"])))
    as_set = render_include(frozenset(INCLUDE_CASES["include_mixed.conf"]))
    assert forward == backward == as_set
    text = forward.decode()
    assert text.count("192.0.2.53/32") == 1
    routes = [line.split()[1] for line in text.splitlines() if line.strip().startswith("route ")]
    assert routes == ["10.0.0.1/32", "192.0.2.53/32", "2001:db8::1/128", "2001:db8:a::53/128"]


def test_include_has_no_timestamp_or_volatile_content():
    assert render_include([net("192.0.2.1/32")]) == render_include([net("192.0.2.1/32")])
    header = render_include([]).decode().splitlines()[0]
    assert header.startswith("# Generated by flock-reconciler")


def test_include_rejects_non_networks():
    with pytest.raises(TypeError):
        render_include([ipaddress.ip_address("192.0.2.1")])
    with pytest.raises(TypeError):
        render_include(["192.0.2.1/32"])


def test_prefix_set_by_family_sorted_like_ipaddress():
    prefixes = [net("2001:db8::1/128"), net("192.0.2.1/32"), net("192.0.2.1/32"), net("10.0.0.0/8")]
    keys = PrefixSet.of(prefixes)
    assert keys == PrefixSet.of(reversed(prefixes)) and hash(keys) == hash(PrefixSet.of(set(prefixes)))
    assert [ipaddress.IPv4Network(key) for key in keys.v4] == sorted({net("192.0.2.1/32"), net("10.0.0.0/8")})
    assert keys.networks() == set(prefixes)
    assert PrefixSet.of(keys) is keys


def test_quote_refuses_what_bird_strings_cannot_hold():
    assert quote("eth0") == '"eth0"'
    for text in ['a"b', "a\\b", "a\nb", "a\x7fb"]:
        with pytest.raises(ValueError):
            quote(text)
    with pytest.raises(ValueError, match="absolute"):
        quote("flock.conf", path=True)


def test_include_10k_matches_golden_hash():
    rendered = render_include(ten_thousand_prefixes())
    digest = f"{hashlib.sha256(rendered).hexdigest()}  {len(rendered)}\n"
    check_golden("include_10k.sha256", digest.encode())
    text = rendered.decode()
    assert text.count(" blackhole;\n") == 10000
    # Spot checks of the order the hash pins: numeric, not textual.
    assert text.index("route 10.0.2.1/32") < text.index("route 10.0.10.1/32")
    assert text.index("route 2001:db8:0:9::53/128") < text.index("route 2001:db8:0:a::53/128")


def test_include_10k_parses_in_bird(tmp_path):
    include = tmp_path / "flock-anycast.conf"
    include.write_bytes(render_include(ten_thousand_prefixes()))
    result = bird_parse(tmp_path, wrapper_config(include))
    assert result.returncode == 0, result.stderr


# --- managed bird.conf ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MANAGED_CASES))
def test_managed_config_matches_golden(name):
    check_golden(name, render_managed_config(MANAGED_CASES[name](), MANAGED_SETTINGS))


@pytest.mark.parametrize("name", sorted(MANAGED_CASES))
def test_managed_config_parses_in_bird(tmp_path, name):
    # Same renderer, with the include pointing at a real file for the parser.
    include = tmp_path / "flock-anycast.conf"
    include.write_bytes(render_include(INCLUDE_CASES["include_mixed.conf"]))
    settings = BirdSettings(mode="managed", include_file=str(include))
    rendered = render_managed_config(MANAGED_CASES[name](), settings)
    golden = (GOLDEN / name).read_bytes()
    assert rendered == golden.replace(b"/etc/bird/flock-anycast.conf", str(include).encode())
    result = bird_parse(tmp_path, rendered.decode())
    assert result.returncode == 0, result.stderr


def test_managed_config_exports_only_flock_statics_and_imports_nothing():
    text = render_managed_config(typical_bgp(), MANAGED_SETTINGS).decode()
    assert not [line for line in text.splitlines() if line.startswith("protocol kernel")]
    assert text.count("import none;") == 3  # tor1: ipv4; rr_far: ipv4 + ipv6
    export_lines = [line.strip() for line in text.splitlines() if line.strip().startswith("export")]
    assert set(export_lines) == {"export filter flock_export4;", "export filter flock_export6;"}
    assert 'if proto = "flock_anycast4" then {' in text
    assert 'if proto = "flock_anycast6" then {' in text


def test_managed_config_options_per_neighbor():
    text = render_managed_config(typical_bgp(), MANAGED_SETTINGS).decode()
    tor1 = text[text.index("protocol bgp tor1") : text.index("protocol bgp rr_far")]
    far = text[text.index("protocol bgp rr_far") :]
    assert 'password "s3cret-key";' in tor1 and "bfd on;" in tor1 and "multihop" not in tor1
    assert "ipv6 {" not in tor1
    assert "multihop 4;" in far and "password" not in far
    assert "next hop address 192.0.2.11;" in far
    assert "protocol bfd flock_bfd" in text
    assert "bgp_community.add((65000, 53));" in text
    assert "bgp_large_community.add((65000, 1, 53));" in text
    assert "graceful restart off;" in text


def test_managed_config_without_bfd_has_no_bfd_protocol():
    text = render_managed_config(v4_over_v6_bgp(), MANAGED_SETTINGS).decode()
    assert "protocol bfd" not in text and "bfd on" not in text
    assert "extended next hop on;" in text
    assert "connect delay time 1;" in text and "error wait time 1, 2;" in text


def test_managed_config_graceful_restart_on_request():
    bgp = v4_over_v6_bgp().model_copy(update={"graceful_restart": True})
    assert b"graceful restart on;" in render_managed_config(bgp, MANAGED_SETTINGS)


def test_node_config_rejects_strings_bird_cannot_quote():
    from reconciler.node_config import NodeConfigError

    base = {
        "nodeName": "n",
        "bird": {"mode": "managed"},
        "bgp": {"routerId": "192.0.2.1", "localAS": 65001, "neighbors": []},
    }
    for neighbor, field in [
        ({"name": "a", "address": "192.0.2.2", "as": 1, "password": 'x"y'}, "password"),
        ({"name": "a", "address": "192.0.2.2", "as": 1, "interface": "eth\n0"}, "interface"),
        ({"name": "flock_anycast4", "address": "192.0.2.2", "as": 1}, "name"),
    ]:
        base["bgp"]["neighbors"] = [neighbor]
        with pytest.raises(NodeConfigError, match=f"bgp.neighbors.0.{field}"):
            parse_node_config(base)
    with pytest.raises(NodeConfigError, match="bird.includeFile"):
        parse_node_config({"nodeName": "n", "bird": {"includeFile": "relative.conf"}})


def test_node_config_rejects_duplicate_neighbor_names():
    from reconciler.node_config import NodeConfigError

    neighbor = {"name": "a", "address": "192.0.2.2", "as": 1}
    with pytest.raises(NodeConfigError, match="unique"):
        parse_node_config(
            {
                "nodeName": "n",
                "bgp": {"routerId": "192.0.2.1", "localAS": 65001, "neighbors": [neighbor, neighbor]},
            }
        )


def test_prefix_text_equals_ipaddress_text():
    from reconciler.bird_render import prefix_text

    rng = random.Random(5)
    samples = [
        net(text)
        for text in ["0.0.0.0/0", "255.255.255.255/32", "::/0", "::1/128", "::ffff:192.0.2.1/128",
                     "::192.0.2.1/128", "64:ff9b::192.0.2.1/128", "2001:db8:0:0:1:0:0:1/128",
                     "2001:0:0:1::/64", "fe80::/10"]
    ]
    for _ in range(3000):
        words = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(65536)]) for _ in range(8)]
        value = sum(word << (16 * (7 - i)) for i, word in enumerate(words))
        samples.append(ipaddress.IPv6Network((value, 128)))
        samples.append(ipaddress.IPv4Network((rng.randrange(2**32), 32)))
    for prefix in samples:
        assert prefix_text(prefix) == prefix.with_prefixlen
