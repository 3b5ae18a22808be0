"""Drives Wasend's official SDK (PyPI `wasend`, over `@wasend/core`) against the
simulator's `invite-code` family: reads a group's code, resets it, reads it again.

Usage: python3 wasend_sdk.py BASE_URL TOKEN SESSION GROUP
Prints one JSON object: {"before": code, "revoked": code, "after": code}. Any answer the
SDK cannot take as its declared plain string makes it raise, and this exit non-zero.
"""

import json
import sys

from wasend import WasendClient


def main() -> None:
    base_url, token, session, group = sys.argv[1:5]
    client = WasendClient(api_key=token, base_url=base_url)
    before = client.get_group_invite_code(session, group)
    revoked = client.revoke_group_invite_code(session, group)
    after = client.get_group_invite_code(session, group)
    for name, value in (("before", before), ("revoked", revoked), ("after", after)):
        if not isinstance(value, str):
            raise SystemExit(f"{name}: not a string: {value!r}")
    print(json.dumps({"before": before, "revoked": revoked, "after": after}))


if __name__ == "__main__":
    main()
