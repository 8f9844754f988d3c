"""Third-party import-time warnings that say nothing to an OminiX user, filtered in the CLI and in
every training worker; ``--debug`` (``OMINIX_DEBUG=1``) shows them.

Each entry names an optional accelerator OminiX does not use, or a deprecation inside ColossalAI's
own code; none asks the user to change anything of theirs.
"""

from __future__ import annotations

import logging
import warnings

from ominix.console import debug_enabled

# (category, start of the message): Python warnings raised while importing or wrapping
WARNINGS = (
    # colossalai.utils.safetensors: async save
    (UserWarning, r"Please install the latest tensornvme"),
    (UserWarning, r"Please install apex from source"),  # colossalai shardformer: fused RMSNorm
    (FutureWarning, r"`broadcast_buffers` is deprecated"),  # ColossalAI's DDP plugin, torch >= 2.10
)
# (logger, start of the message): log records of the same kind
LOG_RECORDS = (
    # the optional `kernels` package
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)


class _Drop(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def filter_third_party_warnings() -> None:
    """Install the filters for this process (nothing with ``--debug``). Idempotent."""
    if debug_enabled():
        return
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefix in LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_Drop(prefix))
