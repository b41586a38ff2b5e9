"""Active learning: a committee trains, samples MD, picks its most uncertain frames, has an oracle
label them and trains again (`lpmace active CONFIG.yaml`; see "Active learning" in docs/usage.md)."""

from lpmace.active.config import ActiveConfig, load_active_config
from lpmace.active.loop import ActiveLoop

__all__ = ["ActiveConfig", "ActiveLoop", "load_active_config"]
