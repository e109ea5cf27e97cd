"""What a node reads and runs is decided by its node config, never by the server's config alone."""

from __future__ import annotations

import pytest

from fedlora.config import compose
from fedlora.config.load import node_view
from fedlora.training.node import SIMULATION_ENV, local_config, node_facts


@pytest.fixture(autouse=True)
def _deployed(monkeypatch):
    monkeypatch.delenv(SIMULATION_ENV, raising=False)


def _files_cfg(tmp_path, *extra):
    path = tmp_path / "corpus.csv"
    path.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(40)))
    return compose(["preset=smoke", "data.source=files", f"data.path={path}", "data.partitioner=iid",
                    "data.central_test_size=4", *extra])


def test_a_deployed_node_does_not_open_the_servers_data_path(tmp_path):
    cfg = _files_cfg(tmp_path)
    with pytest.raises(ValueError, match='a node reads only files its own node config names: set data-path='):
        node_facts(cfg, {"partition-id": 0})
    own = node_facts(cfg, {"partition-id": 0, "data-path": "/srv/mine.csv", "heldout-fraction": 0.2})
    assert (own.own_data, own.data_path, own.heldout_fraction) == (True, "/srv/mine.csv", 0.2)
    shared = node_facts(cfg, {"partition-id": 1, "corpus-path": "/srv/copy.csv"})
    assert (shared.own_data, shared.data_path) == (False, "/srv/copy.csv")
    assert local_config(cfg, shared).data.path == "/srv/copy.csv"
    with pytest.raises(ValueError, match="not both"):
        node_facts(cfg, {"partition-id": 0, "data-path": "a.csv", "corpus-path": "b.csv"})


def test_in_simulation_the_run_config_is_the_nodes_own(tmp_path, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    cfg = _files_cfg(tmp_path, "model.trust_remote_code=true")
    facts = node_facts(cfg, {"partition-id": 0, "num-partitions": 2})
    assert facts.data_path == cfg.data.path and facts.trust_remote_code and not facts.own_data


def test_remote_code_runs_only_where_the_node_allows_it():
    cfg = compose(["preset=smoke", "model.trust_remote_code=true"])
    with pytest.raises(ValueError, match="add trust-remote-code=true to its --node-config"):
        node_facts(cfg, {"partition-id": 0})
    assert node_facts(cfg, {"partition-id": 0, "trust-remote-code": True}).trust_remote_code
    plain = compose(["preset=smoke"])  # a node's permission alone does not turn remote code on
    assert not node_facts(plain, {"partition-id": 0, "trust-remote-code": True}).trust_remote_code
    with pytest.raises(ValueError, match="'trust-remote-code' must be true or false"):
        node_facts(cfg, {"partition-id": 0, "trust-remote-code": "maybe"})


def test_node_config_keys_are_checked_and_override_the_run():
    cfg = compose(["preset=smoke"])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['data_path'\]"):
        node_facts(cfg, {"partition-id": 0, "data_path": "x.csv"})
    with pytest.raises(ValueError, match="'partition-id' is required"):
        node_facts(cfg, {"lora-rank": 2})
    with pytest.raises(ValueError, match="'heldout-fraction' must be in"):
        node_facts(cfg, {"partition-id": 0, "data-path": "x.csv", "heldout-fraction": 0.95})
    facts = node_facts(cfg, {"partition-id": 1, "lora-rank": 2, "device": "cpu", "model-source": "/m"})
    local = local_config(cfg, facts)
    assert (facts.rank, local.model.device, local.model.source) == (2, "cpu", "/m")


def test_clients_never_receive_the_servers_run_directory(tmp_path):
    cfg = compose(["preset=smoke", f"output_dir={tmp_path / 'run'}", "overwrite=true"])
    shipped = node_view(cfg)
    assert (shipped.output_dir, shipped.resume, shipped.overwrite) == ("", "", False)
    assert shipped.lora == cfg.lora and shipped.train == cfg.train


def test_a_node_decides_whether_it_keeps_a_shared_weights_copy():
    cfg = compose(["preset=smoke"])
    assert node_facts(cfg, {"partition-id": 0}).share_weights is cfg.model.share_weights is True
    facts = node_facts(cfg, {"partition-id": 0, "share-weights": "false"})
    assert not facts.share_weights and not local_config(cfg, facts).model.share_weights
    off = compose(["preset=smoke", "model.share_weights=false"])
    assert node_facts(off, {"partition-id": 0, "share-weights": True}).share_weights
    with pytest.raises(ValueError, match="'share-weights' must be true or false"):
        node_facts(cfg, {"partition-id": 0, "share-weights": "sometimes"})
