"""vlm4vla-client: talk to a ``vlm4vla serve`` policy server from any Python >= 3.8 environment.

Depends on numpy, msgpack and websockets only (no torch), so it installs beside a simulator's own
environment (CALVIN's Python 3.8, SimplerEnv's SAPIEN 2 and ``numpy<2``)::

    from vlm4vla_client import PolicyServerClient

    with PolicyServerClient("ws://gpu-node:8000") as policy:
        print(policy.metadata["checkpoint"], policy.metadata["chunk_size"])
        chunk = policy.predict([image], ["open the drawer"])[0]   # (N, 7) in the env's units
"""

from vlm4vla_client.client import (
    AuthenticationError,
    PolicyServerClient,
    PolicyServerError,
    ServerChangedError,
    ServerUnavailableError,
    metadata_identity,
)
from vlm4vla_client.protocol import (
    DEFAULT_MAX_IMAGE_SIDE,
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ProtocolError,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_MAX_IMAGE_SIDE",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "TOKEN_ENV",
    "AuthenticationError",
    "PolicyServerClient",
    "PolicyServerError",
    "ProtocolError",
    "ServerChangedError",
    "ServerUnavailableError",
    "metadata_identity",
]
