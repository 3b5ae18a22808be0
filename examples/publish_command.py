"""Publishes one revoke_invite command to invite-worker and waits for the broker's confirm.

The Python twin of publish_command.rs, shown in the README. AMQP_URL (default: the local
broker) and COMMANDS_EXCHANGE (default invite_link.commands) say where.

    pip install pika && python3 examples/publish_command.py
"""

import json
import os
import uuid

import pika

amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
exchange = os.environ.get("COMMANDS_EXCHANGE", "invite_link.commands")

# [publish]
connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
channel = connection.channel()
channel.confirm_delivery()  # basic_publish returns once the broker has the command
command_id = str(uuid.uuid4())
command = {"command_id": command_id, "type": "revoke_invite", "session_id": "sales-team",
           "group_id": "120363041234567890@g.us", "reason": "link leaked on a public forum",
           "requested_by": "support-portal"}
properties = pika.BasicProperties(content_type="application/json", message_id=command_id,
                                  delivery_mode=pika.DeliveryMode.Persistent)
# Raises UnroutableError when no queue is bound (mandatory), NackError when refused:
# then publish again with the same command_id.
channel.basic_publish(exchange, "command.revoke_invite", json.dumps(command).encode(),
                      properties, mandatory=True)
print(command_id)
# [/publish]
connection.close()
