"""The Kubernetes manifests validate against Kubernetes' own OpenAPI schemas, strictly.

Strict mode rejects unknown fields, so a misspelt key fails here rather
than being dropped silently by the API server.
"""

from __future__ import annotations

import glob
import os

import pytest
import yaml

from reconciler.node_config import parse_node_config

kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "kubernetes")
MANIFESTS = sorted(glob.glob(os.path.join(DEPLOY, "*.yaml")))
KUBERNETES_VERSION = "1.30.0"


def documents():
    for path in MANIFESTS:
        with open(path, encoding="utf-8") as handle:
            for index, document in enumerate(yaml.safe_load_all(handle)):
                if document:
                    yield pytest.param(document, id=f"{os.path.basename(path)}#{index}:{document['kind']}")


@pytest.mark.parametrize("document", list(documents()))
def test_manifest_is_valid_for_kubernetes(document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    with open(os.path.join(DEPLOY, "daemonset.yaml"), encoding="utf-8") as handle:
        daemonset = yaml.safe_load(handle)
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_the_rbac_grants_only_reads_of_pods():
    with open(os.path.join(DEPLOY, "rbac.yaml"), encoding="utf-8") as handle:
        [role] = [document for document in yaml.safe_load_all(handle) if document["kind"] == "ClusterRole"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_the_configmap_holds_a_valid_reconciler_config(monkeypatch):
    from reconciler.node_config import expand_environment

    with open(os.path.join(DEPLOY, "configmap.yaml"), encoding="utf-8") as handle:
        configmap = yaml.safe_load(handle)
    environment = {"NODE_NAME": "node-a", "NODE_IP": "10.0.0.7", "POOLS": configmap["data"]["pools"]}
    text = expand_environment(configmap["data"]["reconciler.yaml"], environment)
    config = parse_node_config(yaml.safe_load(text))
    assert config.node_name == "node-a" and str(config.bgp.router_id) == "10.0.0.7"
    # The reconciler's pools are the plugin's (the install step reads the same key).
    assert [str(pool) for pool in config.pools] == configmap["data"]["pools"].split(",")
