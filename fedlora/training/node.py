"""Who a client is: its partition, rank, hardware, and what it may read, decided on the node.

In a deployment the run config comes from the server, but the node decides what it reads and
runs: its own training file (``data-path``, used whole), its copy of a shared corpus
(``corpus-path``), its model directory (``model-source``), and whether remote model code may run
(``trust-remote-code``). A server's config alone never makes a node open a path or execute
remote code. In the Simulation Engine every virtual node is the user's own process, so the run
config is the node's config (:func:`in_simulation` tells them apart).

Node-config keys (``flower-supernode --node-config 'key=value ...'``, string values TOML-quoted):
``partition-id`` (required), ``num-partitions``, ``lora-rank``, ``device``, ``quantization``,
``data-path``, ``heldout-fraction``, ``corpus-path``, ``model-source``, ``trust-remote-code``,
``share-weights`` (whether this node keeps a shared CPU copy of a converted base model in its
model cache, :mod:`fedlora.models.shared_weights`; default: the run's ``model.share_weights``),
``worker``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlora.config.schema import RunConfig

SIMULATION_ENV = "FEDLORA_SIMULATION"
"""Set to ``1`` by :func:`simulations.engine.simulate` for its Ray workers."""

NODE_KEYS = ("partition-id", "num-partitions", "lora-rank", "device", "quantization", "data-path",
             "heldout-fraction", "corpus-path", "model-source", "trust-remote-code", "share-weights",
             "worker")
PATH_SOURCES = ("files", "hf")


def in_simulation() -> bool:
    """True inside fedlora's Simulation Engine workers (the run config is the node's own)."""
    return os.environ.get(SIMULATION_ENV) == "1"


@dataclass(frozen=True)
class NodeFacts:
    """This node's identity, adapter rank, hardware and data, as its node config sets them."""

    partition_id: int
    num_partitions: int
    rank: int
    device: str
    quantization: str
    data_path: str  # the shared corpus's path (partitioned), or the node's own file when own_data
    own_data: bool = False  # data_path is this node's own training file, used whole
    heldout_fraction: float = 0.0  # own data: local validation fraction
    model_source: str = ""
    trust_remote_code: bool = False
    share_weights: bool = True


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"node config: {key!r} must be true or false, got {value!r}")


def node_facts(cfg: RunConfig, node_config: Mapping[str, Any]) -> NodeFacts:
    """Combine the run config with this node's own config (the node decides what it reads).

    Raises
    ------
    ValueError
        Naming the node-config key to set: a missing ``partition-id``, an unknown key, a run that
        asks for remote code the node did not allow, or a path-based corpus the node has no copy of.
    """
    unknown = sorted(set(node_config) - set(NODE_KEYS))
    if unknown:
        raise ValueError(f"node config: unknown key(s) {unknown}; expected some of {list(NODE_KEYS)}")
    if "partition-id" not in node_config:
        raise ValueError(
            "node config: 'partition-id' is required (flower-supernode --node-config 'partition-id=0 ...')"
        )
    pid = int(node_config["partition-id"])
    sim = in_simulation()
    own = str(node_config.get("data-path", "")).strip()
    corpus = str(node_config.get("corpus-path", "")).strip()
    if own and corpus:
        raise ValueError("node config: give 'data-path' (this node's own data, used whole) or 'corpus-path' "
                         "(its copy of the shared corpus, partitioned), not both")
    data_path = own or corpus or cfg.data.path
    if not (sim or own or corpus) and (cfg.data.source in PATH_SOURCES or cfg.data.path):
        raise ValueError(
            f"the run's data is a path on the server (data.source={cfg.data.source!r}, data.path="
            f"{cfg.data.path!r}); a node reads only files its own node config names: set "
            "data-path=\"<file>\" (this node's own data) or corpus-path=\"<file>\" (its copy of the shared "
            "corpus) in --node-config")
    trust = _flag(node_config.get("trust-remote-code", False), "trust-remote-code")
    if cfg.model.trust_remote_code and not (sim or trust):
        raise ValueError(
            f"the run sets model.trust_remote_code=true for {cfg.model.source!r}, but this node does not "
            "allow remote code: add trust-remote-code=true to its --node-config if you trust that model")
    heldout = float(node_config.get("heldout-fraction", 0.0))
    if not 0.0 <= heldout < 0.9:
        raise ValueError(f"node config: 'heldout-fraction' must be in [0, 0.9), got {heldout}")
    return NodeFacts(
        partition_id=pid,
        num_partitions=int(node_config.get("num-partitions", cfg.federation.num_clients)),
        rank=int(node_config.get("lora-rank", cfg.lora.rank_for(pid))),
        device=str(node_config.get("device", cfg.model.device)),
        quantization=str(node_config.get("quantization", cfg.model.quantization)),
        data_path=data_path, own_data=bool(own), heldout_fraction=heldout,
        model_source=str(node_config.get("model-source", "")).strip() or cfg.model.source,
        trust_remote_code=cfg.model.trust_remote_code and (sim or trust),
        share_weights=_flag(node_config.get("share-weights", cfg.model.share_weights), "share-weights"),
    )


def local_config(cfg: RunConfig, facts: NodeFacts) -> RunConfig:
    """The run config as this node sees it (its device, quantization, model and data paths)."""
    model = dataclasses.replace(cfg.model, device=facts.device, quantization=facts.quantization,
                                source=facts.model_source, trust_remote_code=facts.trust_remote_code,
                                share_weights=facts.share_weights)
    return dataclasses.replace(cfg, model=model, data=dataclasses.replace(cfg.data, path=facts.data_path))


def process_facts() -> dict[str, int]:
    """Facts about the process that answered: how many base models it loaded, and its pid."""
    from fedlora.models.build import base_model_loads

    return {"base-model-loads": base_model_loads(), "worker-pid": os.getpid()}
