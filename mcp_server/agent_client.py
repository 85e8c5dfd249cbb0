#!/usr/bin/env python3
"""agentdock-agent: call the agent API from inside a sandbox, with nothing but Python's standard
library. The daemon puts this file next to agent.sock ($AGENTDOCK_SOCKET's directory).

    agentdock-agent me                      # GET /api/agent/me
    agentdock-agent GET /api/agent/context
    agentdock-agent POST /api/agent/spawn '{"agent_name": "helper"}'

Prints the JSON answer; exits 1 with the diagnostic on stderr when the daemon refuses.
"""

import http.client
import json
import os
import socket
import sys

SHORTHANDS = {"me": ("GET", "/api/agent/me"), "context": ("GET", "/api/agent/context"),
              "soul": ("GET", "/api/agent/soul"), "coordinator": ("GET", "/api/agent/coordinator/config")}


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("agentdock", timeout=120)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def main(argv: list) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    method, path = SHORTHANDS.get(argv[0], (argv[0].upper(), argv[1] if len(argv) > 1 else "/"))
    body = argv[2] if argv[0] not in SHORTHANDS and len(argv) > 2 else None
    conn = UnixConnection(os.environ.get("AGENTDOCK_SOCKET", "/run/agentdock/agent.sock"))
    headers = {"Authorization": "Bearer " + os.environ.get("AGENTDOCK_TOKEN", "")}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    text = resp.read().decode("utf-8", "replace")
    if resp.status >= 400:
        sys.stderr.write(text + "\n")
        return 1
    try:
        print(json.dumps(json.loads(text), indent=2))
    except ValueError:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
