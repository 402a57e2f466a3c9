"""usageledger: record LLM usage without slowing the caller; deliver it exactly once in effect."""

from .records import UsageRecord, new_id

__version__ = "0.1.0"

__all__ = ["UsageRecord", "new_id", "__version__"]
