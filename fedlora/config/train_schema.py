"""Typed ``train`` group: local training on each client and the learning-rate schedule."""

from __future__ import annotations

from dataclasses import dataclass

from fedlora.config.choices import LR_SCHEDULES, OPTIMIZERS, choice_problems


@dataclass
class TrainConfig:
    """Local training on each client, and the learning-rate schedule across rounds."""

    local_steps: int = 20
    local_epochs: float = 0.0
    batch_size: int = 16
    eval_batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    lr_min_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 10
    optimizer: str = "adamw"
    loraplus_lr_ratio: float = 1.0
    gradient_checkpointing: bool = False

    def problems(self) -> list[str]:
        out = choice_problems("train.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        out += choice_problems("train.optimizer", self.optimizer, OPTIMIZERS)
        if self.loraplus_lr_ratio <= 0:
            out.append(f"train.loraplus_lr_ratio: expected > 0 (1: plain LoRA), got {self.loraplus_lr_ratio}")
        if self.local_steps < 0 or self.local_epochs < 0:
            out.append("train.local_steps / train.local_epochs: must not be negative")
        if self.local_steps == 0 and self.local_epochs == 0:
            out.append("train.local_steps: set local_steps > 0 or local_epochs > 0")
        for name in ("batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                out.append(f"train.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            out.append(f"train.lr: expected a positive number, got {self.lr}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            out.append(f"train.lr_min_ratio: expected a value in [0, 1], got {self.lr_min_ratio}")
        if self.max_grad_norm < 0:
            out.append(f"train.max_grad_norm: expected >= 0 (0 = no clipping), got {self.max_grad_norm}")
        return out
