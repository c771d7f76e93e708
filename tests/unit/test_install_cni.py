"""install-cni round trips on real-shaped conflists: append, re-run byte-identical, uninstall exactly."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from cni_plugin import install

CORPUS = os.path.join(os.path.dirname(__file__), "data", "conflists")
CORPUS_FILES = sorted(os.listdir(CORPUS))


def snapshot(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory)) if (directory / name).is_file()}


@pytest.fixture
def node(tmp_path):
    conf_dir = tmp_path / "net.d"
    bin_dir = tmp_path / "bin"
    conf_dir.mkdir()
    bin_dir.mkdir()
    binary = tmp_path / "flock-anycast"
    binary.write_bytes(b"#!/bin/sh\necho frozen\n")
    return conf_dir, bin_dir, binary


def install_args(conf_dir, bin_dir, binary, *extra):
    return [
        "install", "--binary", str(binary), "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
        "--pool", "192.0.2.0/24", "--pool", "2001:db8:a::/64", "--capability", *extra,
    ]


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_install_twice_then_uninstall(node, name):
    conf_dir, bin_dir, binary = node
    shutil.copy(os.path.join(CORPUS, name), conf_dir / f"10-{name}")
    name = f"10-{name}"
    # A later file that must not be touched: libcni loads only the first.
    (conf_dir / "99-loopback.conf").write_text('{"cniVersion":"0.3.1","name":"lo","type":"loopback"}')
    original = snapshot(conf_dir)

    assert install.run(install_args(conf_dir, bin_dir, binary), stdout=open(os.devnull, "w")) == 0
    after_first = snapshot(conf_dir)
    stem = os.path.splitext(name)[0]
    [chained] = [n for n in after_first if n.startswith(stem) and n.endswith(".conflist")]
    document = json.loads(after_first[chained])
    original_document = json.loads(original[name])
    main_plugins = original_document.get("plugins") or [
        {k: v for k, v in original_document.items() if k not in ("cniVersion", "name")}
    ]
    assert document["plugins"][:-1] == main_plugins, "existing plugins and their order are preserved"
    ours = document["plugins"][-1]
    assert ours["type"] == "flock-anycast"
    assert ours["flock"] == {"pools": ["192.0.2.0/24", "2001:db8:a::/64"], "stateDir": "/var/lib/flock"}
    assert ours["capabilities"] == {"anycast": True}
    assert after_first["99-loopback.conf"] == original["99-loopback.conf"]
    assert (bin_dir / "flock-anycast").read_bytes() == binary.read_bytes()
    assert os.stat(bin_dir / "flock-anycast").st_mode & stat.S_IXUSR

    inode = os.stat(conf_dir / chained).st_ino
    assert install.run(install_args(conf_dir, bin_dir, binary), stdout=open(os.devnull, "w")) == 0
    assert snapshot(conf_dir) == after_first
    assert os.stat(conf_dir / chained).st_ino == inode, "an unchanged file is not rewritten"

    args = ["uninstall", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir)]
    assert install.run(args, stdout=open(os.devnull, "w")) == 0
    restored = snapshot(conf_dir)
    assert set(restored) == set(original)
    if name.endswith(".conf"):
        assert restored[name] == original[name], "a converted .conf comes back byte for byte"
    assert json.loads(restored[name]) == json.loads(original[name])
    assert not os.path.lexists(bin_dir / "flock-anycast")
    assert install.run(args, stdout=open(os.devnull, "w")) == 0
    assert snapshot(conf_dir) == restored


def test_changed_settings_replace_our_entry_in_place(node):
    conf_dir, bin_dir, binary = node
    shutil.copy(os.path.join(CORPUS, "calico.conflist"), conf_dir / "10-calico.conflist")
    install.run(install_args(conf_dir, bin_dir, binary), stdout=open(os.devnull, "w"))
    install.run(install_args(conf_dir, bin_dir, binary, "--state-dir", "/run/flock"), stdout=open(os.devnull, "w"))
    plugins = json.loads((conf_dir / "10-calico.conflist").read_text())["plugins"]
    assert [plugin["type"] for plugin in plugins] == ["calico", "portmap", "bandwidth", "flock-anycast"]
    assert plugins[-1]["flock"]["stateDir"] == "/run/flock"


def test_kubeconfig_from_service_account(node, tmp_path):
    conf_dir, bin_dir, binary = node
    shutil.copy(os.path.join(CORPUS, "ptp.conflist"), conf_dir / "10-ptp.conflist")
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("tok-123\n")
    (account / "ca.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nabc\n")
    kubeconfig = conf_dir / "flock-anycast.kubeconfig"
    extra = ["--kubeconfig", str(kubeconfig), "--service-account-dir", str(account)]
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert install.run(install_args(conf_dir, bin_dir, binary, *extra), stdout=open(os.devnull, "w"), environ=environ) == 0
    config = json.loads(kubeconfig.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://[fd00::1]:6443"
    assert config["users"][0]["user"]["token"] == "tok-123"
    assert stat.S_IMODE(os.stat(kubeconfig).st_mode) == 0o600
    plugins = json.loads((conf_dir / "10-ptp.conflist").read_text())["plugins"]
    assert plugins[-1]["flock"]["kubeconfig"] == str(kubeconfig)


def test_empty_conf_dir_is_a_clear_error(node, capsys):
    conf_dir, bin_dir, binary = node
    assert install.run(install_args(conf_dir, bin_dir, binary), stdout=open(os.devnull, "w")) == 1
    assert "no CNI config" in capsys.readouterr().err


def test_invalid_conflist_is_refused_and_left_alone(node, capsys):
    conf_dir, bin_dir, binary = node
    (conf_dir / "10-broken.conflist").write_text("{not json")
    assert install.run(install_args(conf_dir, bin_dir, binary), stdout=open(os.devnull, "w")) == 1
    assert (conf_dir / "10-broken.conflist").read_text() == "{not json"
    assert "cannot read CNI config" in capsys.readouterr().err


def test_a_fifo_among_the_configs_is_refused_without_hanging(tmp_path):
    """install reads the primary config; a FIFO in its place must not block the DaemonSet's init step."""
    import threading

    from cni_plugin.install import InstallError, install_into_conf_dir

    os.mkfifo(tmp_path / "10-main.conflist")
    outcome = {}

    def target():
        try:
            install_into_conf_dir(str(tmp_path), {"type": "flock-anycast"})
        except InstallError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "install blocked on a FIFO"
    assert "not a regular file" in str(outcome["error"])
