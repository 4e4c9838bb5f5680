"""cluster.yaml passes Ray's own launcher schema offline and pins the Ray version of pyproject.toml."""

from __future__ import annotations

import re

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.helpers import ROOT


def test_cluster_yaml_is_valid_and_pinned():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["node_config"]["InstanceType"].startswith(("g5.", "g6."))
    assert workers["node_config"]["IamInstanceProfile"]["Name"]
    low, high = re.search(r'"ray\[[^]]*\]>=([\d.]+),<([\d.]+)"', (ROOT / "pyproject.toml").read_text()).groups()
    pinned = re.search(r'ray\[[^]]*\]==([\d.]+)', " ".join(config["setup_commands"])).group(1)
    version = lambda v: tuple(int(p) for p in v.split("."))  # noqa: E731
    assert version(low) <= version(pinned) < version(high)  # the cluster pins one Ray within the project's range
