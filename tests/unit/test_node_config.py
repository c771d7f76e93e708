"""The node config of flock-reconciler: defaults, camelCase keys, errors that name the field."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from reconciler.node_config import NodeConfigError, load_node_config, parse_node_config

MINIMAL = {"nodeName": "node-1", "pools": ["192.0.2.0/24"]}


def test_minimal_config_takes_the_documented_defaults():
    config = parse_node_config(MINIMAL)

    assert config.node_name == "node-1"
    assert config.state_dir == "/var/lib/flock"
    assert config.readiness.source == "always"
    assert (config.routes.protocol, config.routes.table) == (70, 254)
    assert config.drain_delay == 2.0
    assert config.bird.mode == "include"
    assert config.bird.socket == "/run/bird/bird.ctl"
    assert config.http.listen == "127.0.0.1:9472"
    assert config.bgp is None


def test_full_config_from_yaml(tmp_path):
    path = tmp_path / "node.yaml"
    path.write_text(
        """
nodeName: node-1
pools: [192.0.2.0/24, "2001:db8:a::/64"]
stateDir: /run/flock-test
readiness: {source: file, file: /run/flock-test/ready.yaml}
routes: {protocol: 71, table: 100}
drainDelay: 0.5
resyncInterval: 10
debounce: 0.01
maxWait: 0.2
bird:
  mode: managed
  socket: /run/bird-test/bird.ctl
  includeFile: /run/bird-test/flock.conf
  configFile: /run/bird-test/bird.conf
  retry: {initial: 0.1, maximum: 2}
bgp:
  routerId: 192.0.2.1
  localAS: 65001
  communities: ["65001:53"]
  neighbors:
    - {name: tor1, address: "2001:db8::1", as: 65000, bfd: true}
http: {listen: ""}
logLevel: debug
"""
    )

    config = load_node_config(str(path))

    assert config.readiness.file == "/run/flock-test/ready.yaml"
    assert config.routes.protocol == 71 and config.routes.table == 100
    assert config.max_wait == 0.2
    assert config.bird.retry.initial == 0.1
    assert config.bgp.neighbors[0].address == ip_address("2001:db8::1")
    assert config.bgp.neighbors[0].remote_as == 65000
    assert config.http.listen == ""


@pytest.mark.parametrize(
    "data, field",
    [
        ({}, "nodeName"),
        ({**MINIMAL, "drainDelay": -1}, "drainDelay"),
        ({**MINIMAL, "routes": {"protocol": 300}}, "routes.protocol"),
        ({**MINIMAL, "routes": {"protcol": 71}}, "routes.protcol"),
        ({**MINIMAL, "readiness": {"source": "file"}}, "readiness"),
        ({**MINIMAL, "readiness": {"source": "sometimes"}}, "readiness.source"),
        ({**MINIMAL, "bird": {"mode": "managed"}}, "bgp is required"),
        ({**MINIMAL, "debounce": 1, "maxWait": 0.5}, "maxWait"),
        ({**MINIMAL, "resyncInterval": 0}, "resyncInterval"),
        ({**MINIMAL, "bird": {"retry": {"initial": 0}}}, "bird.retry.initial"),
    ],
    ids=[
        "missing nodeName",
        "negative drain",
        "protocol out of range",
        "typo in key",
        "file source without file",
        "unknown source",
        "managed without bgp",
        "maxWait below debounce",
        "zero resync",
        "zero retry",
    ],
)
def test_invalid_config_names_the_field(data, field):
    with pytest.raises(NodeConfigError) as raised:
        parse_node_config(data)

    assert field in str(raised.value)


def test_unreadable_and_non_yaml_files_are_config_errors(tmp_path):
    with pytest.raises(NodeConfigError, match="cannot read"):
        load_node_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodeName: [unclosed\n")
    with pytest.raises(NodeConfigError, match="not valid YAML"):
        load_node_config(str(bad))


@pytest.mark.parametrize(
    "pools, message",
    [
        (None, "pools: Field required"),
        ([], "at least 1"),
        (["192.0.2.1/24"], "host bits set"),
        (["not-a-net"], "not a network"),
        ([24], "CIDR string"),
    ],
    ids=["missing", "empty", "host bits", "junk", "not a string"],
)
def test_pools_are_required_networks(pools, message):
    """Issue 11 #7: no default that would route everything, or withdraw a node upgraded without pools."""
    data = {"nodeName": "node-1", **({} if pools is None else {"pools": pools})}
    with pytest.raises(NodeConfigError, match=message):
        parse_node_config(data)


def test_pools_and_probe_interval_parse():
    config = parse_node_config({**MINIMAL, "pools": ["192.0.2.0/24", "2001:db8:a::/64"], "bird": {"probeInterval": 0.2}})
    assert [str(pool) for pool in config.pools] == ["192.0.2.0/24", "2001:db8:a::/64"]
    assert config.bird.probe_interval == 0.2
    assert parse_node_config(MINIMAL).bird.probe_interval == 0.5
