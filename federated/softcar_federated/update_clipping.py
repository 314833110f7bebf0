"""Client-level DP's clipping on the node, as a Flower mod that imports no torch.

The ClientApp module is loaded in a fresh process for every message (Flower 1.41 deployment
mode), so its mods must stay light; see ``client_app``.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def client_level_clipping_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``fixedclipping_mod`` on training messages that carry a clipping norm (sent by
    ``DifferentialPrivacyClientSideFixedClipping``), a pass-through otherwise, so one ClientApp
    serves every ``dp`` mode: the update (reply − global) is clipped before it leaves the node."""
    if msg.metadata.message_type == MessageType.TRAIN and any(
        KEY_CLIPPING_NORM in record for record in msg.content.config_records.values()
    ):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
