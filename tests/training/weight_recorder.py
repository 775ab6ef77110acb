"""A callback for tests: the module's floating-point state after every optimizer step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

# Class attribute: the CLI builds the callback from a config, the test reads what it saw.
SEEN: list[dict[str, torch.Tensor]] = []


class WeightRecorder(L.Callback):
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        SEEN.append(
            {
                k: v.detach().clone()
                for k, v in pl_module.state_dict().items()
                if v.is_floating_point()
            }
        )
