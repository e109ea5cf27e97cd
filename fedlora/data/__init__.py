"""Data for federated LoRA runs: load a corpus, split it across clients, tokenize it.

Why one package: every Flower process (server and each simulation worker) must derive the *same*
central test set and client partitions from the ``data`` config alone, without coordination. The
pipeline is ``load_source`` (canonical columns) -> ``build_splits`` (seeded central test set +
flwr-datasets partitioners, memoised per process) -> ``tokenize_dataset`` / ``make_collator``.
"""

from __future__ import annotations

from fedlora.data.formatting import (
    IGNORE_INDEX,
    end_of_turn_token,
    ensure_pad_token,
    make_collator,
    pad_token_id,
    tokenize_dataset,
)
from fedlora.data.formatting import clear_cache as clear_token_cache
from fedlora.data.node_data import load_node_data
from fedlora.data.partition import (
    ClientData,
    FederatedSplits,
    build_splits,
    label_names,
    load_central_test,
    load_client_data,
)
from fedlora.data.partition import clear_cache as clear_split_cache
from fedlora.data.sources import load_source

__all__ = [
    "IGNORE_INDEX",
    "ClientData",
    "FederatedSplits",
    "build_splits",
    "clear_caches",
    "clear_split_cache",
    "clear_token_cache",
    "end_of_turn_token",
    "ensure_pad_token",
    "label_names",
    "load_central_test",
    "load_client_data",
    "load_node_data",
    "load_source",
    "make_collator",
    "pad_token_id",
    "tokenize_dataset",
]


def clear_caches() -> None:
    """Forget memoised splits, client data and tokenized datasets of this process."""
    from fedlora.data import node_data

    clear_split_cache()
    clear_token_cache()
    node_data.clear_cache()
