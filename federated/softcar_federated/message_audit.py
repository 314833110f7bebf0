"""An audit log of what leaves a node: every reply its ClientApp sends, as the bytes Flower sends.

With node config ``audit-log=<folder>`` the outermost ClientApp mod writes each reply, after
every other mod (SecAgg+ masking included) has run, as Flower serialises it for the SuperNode:
the message header plus every inflatable object of its content (records, arrays, array chunks).
An operator can grep that folder for their own data; ``tests/test_no_text_leaves.py`` does.
Imports only Flower, so it costs nothing on the light (key-exchange) messages.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from pathlib import Path

from flwr.app import Context, Message
from flwr.app.message import remove_content_from_message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import message_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

logger = logging.getLogger(__name__)

AUDIT_LOG_KEY = "audit-log"
"""Node-config key: folder that receives one ``.bin`` file per reply."""


def wire_bytes(message: Message) -> bytes:
    """The header and every content object of ``message``, serialised as Flower pushes them."""
    header = message_to_proto(remove_content_from_message(message)).SerializeToString()
    objects = get_all_nested_objects(message)
    return b"".join([header, *(obj.deflate() for obj in objects.values())])


def audit_log_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Pass the message on; if ``audit-log`` is set, write the reply's wire bytes there (atomically)."""
    reply = call_next(msg, context)
    folder = context.node_config.get(AUDIT_LOG_KEY)
    if folder:
        target = Path(str(folder))
        target.mkdir(parents=True, exist_ok=True)
        name = f"{context.run_id}-{msg.metadata.message_type}-{msg.metadata.group_id or 'x'}-{uuid.uuid4().hex}.bin"
        handle, tmp = tempfile.mkstemp(dir=target, suffix=".tmp")
        with os.fdopen(handle, "wb") as out:
            out.write(wire_bytes(reply))
        os.replace(tmp, target / name)
        logger.debug("audit log: wrote %s", name)
    return reply
