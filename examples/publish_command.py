"""Publishes one revoke_invite command to invite-worker and waits for the broker's confirm.

The Python twin of publish_command.rs. AMQP_URL (default: the local broker) and
COMMANDS_EXCHANGE (default invite_link.commands) say where.

    pip install pika && python3 examples/publish_command.py
"""

import json
import os
import uuid

import pika


def revoke_invite(channel, exchange, session_id, group_id, reason):
    """Publishes a revoke_invite command; returns its command_id once the broker has it.

    The channel must be in confirm mode (channel.confirm_delivery()): basic_publish then
    returns only after the broker's confirm, and raises pika.exceptions.NackError or,
    with mandatory=True and no queue bound, pika.exceptions.UnroutableError.
    """
    command_id = str(uuid.uuid4())
    body = {
        "command_id": command_id,
        "type": "revoke_invite",
        "session_id": session_id,
        "group_id": group_id,
        "reason": reason,
        "requested_by": "support-portal",
    }
    channel.basic_publish(
        exchange=exchange,
        routing_key="command.revoke_invite",
        body=json.dumps(body).encode(),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=command_id,
        ),
        mandatory=True,
    )
    return command_id


if __name__ == "__main__":
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    exchange = os.environ.get("COMMANDS_EXCHANGE", "invite_link.commands")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.confirm_delivery()
    command_id = revoke_invite(
        channel,
        exchange,
        "sales-team",
        "120363041234567890@g.us",
        "link leaked on a public forum",
    )
    print(command_id)
    connection.close()
