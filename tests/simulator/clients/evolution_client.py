"""Drives Evolution API's official Python client (PyPI `evolutionapi`) against the
simulator's `evolution` dialect: reads a group's code, resets it, reads it again.

Usage: python3 evolution_client.py BASE_URL TOKEN INSTANCE GROUP_JID
Prints one JSON object: {"before": code, "revoked": code, "after": code}; exits non-zero
when the client raises or an answer lacks the fields the client's callers read.
"""

import json
import sys

from evolutionapi.client import EvolutionClient


def main() -> None:
    base_url, token, instance, group = sys.argv[1:5]
    client = EvolutionClient(base_url=base_url, api_token=token)
    read = client.group.get_invite_code(instance, group, token)
    revoked = client.group.revoke_invite_code(instance, group, token)
    again = client.group.get_invite_code(instance, group, token)
    if not revoked.get("revoked"):
        raise SystemExit(f"reset not reported as revoked: {revoked!r}")
    for answer in (read, again):
        if answer["inviteUrl"] != "https://chat.whatsapp.com/" + answer["inviteCode"]:
            raise SystemExit(f"inviteUrl does not carry inviteCode: {answer!r}")
    print(json.dumps({
        "before": read["inviteCode"],
        "revoked": revoked["inviteCode"],
        "after": again["inviteCode"],
    }))


if __name__ == "__main__":
    main()
