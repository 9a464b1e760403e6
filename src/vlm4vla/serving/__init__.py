"""The policy server (``vlm4vla serve``) and what it tells its clients about the bundle it serves.

The wire protocol and the client live in the torch-free ``vlm4vla-client`` package
(``clients/python``), which simulator environments install on their own.
"""

from __future__ import annotations

from vlm4vla.lazy_imports import lazy_exports

_EXPORTS = {
    "PolicyServer": "vlm4vla.serving.server",
    "bundle_metadata": "vlm4vla.serving.metadata",
    "normalizer_hash": "vlm4vla.serving.metadata",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
