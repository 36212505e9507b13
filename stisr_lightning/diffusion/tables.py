"""What the schedulers share: their 1-D schedule tables, copied once per device and looked up per sample."""

from __future__ import annotations

import torch
from torch import Tensor


class ScheduleTables:
    """Mixin: `self._device_tables` caches `getattr(self, name)` per device; the scheduler clears it when its tables
    change (`set_timesteps`)."""

    _device_tables: dict[tuple[str, torch.device], Tensor]

    def _table(self, name: str, device: torch.device) -> Tensor:
        """A schedule table on `device`, copied once per device (never inside the sampling loop)."""
        key = (name, device)
        if key not in self._device_tables:
            self._device_tables[key] = getattr(self, name).to(device)
        return self._device_tables[key]

    def _coefficient(self, name: str, t: Tensor | int, like: Tensor) -> Tensor:
        """table[t] shaped to broadcast over `like`; index_select keeps a device index on the device (no sync)."""
        table = self._table(name, like.device)
        index = torch.as_tensor(t, device=table.device).reshape(-1)
        return table.index_select(0, index).to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
