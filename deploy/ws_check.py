#!/usr/bin/env python3
"""The WebSocket client of deploy/check-image.sh (the `websockets` library,
from the virtualenv the script makes).

  ws_check.py realtime ws://127.0.0.1:PORT/ws/realtime
      session_started, one sample, its step_detection; exit 0 when both came.
  ws_check.py stats ws://127.0.0.1:PORT/ws/realtime
      one sample, then {"action":"stats"}; prints server_stats as JSON.
  ws_check.py hold ws://127.0.0.1:PORT/ws/realtime READY_FILE [SECONDS]
      one sample and its reply, writes READY_FILE, then waits (bounded) for
      the server to close the socket and prints `close CODE REASON`.

Loopback only: anything else is refused.
"""

import json
import sys
import time
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

SAMPLE = {"x": 0.1, "y": 9.8, "z": 0.3}
TIMEOUT = 10.0


def expect(ws, kind):
    """The next message of type `kind`, skipping others, within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        message = json.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
        if message.get("type") == kind:
            return message


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    mode, url = argv[1], argv[2]
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing {url}: loopback only")
    with connect(url, open_timeout=TIMEOUT) as ws:
        started = expect(ws, "session_started")
        ws.send(json.dumps(SAMPLE))
        reply = expect(ws, "step_detection")
        if mode == "realtime":
            print(json.dumps(started))
            print(json.dumps(reply))
        elif mode == "stats":
            ws.send(json.dumps({"action": "stats"}))
            print(json.dumps(expect(ws, "stats_response")["server_stats"]))
        elif mode == "hold":
            ready, seconds = argv[3], float(argv[4]) if len(argv) > 4 else 60.0
            with open(ready, "w") as f:
                f.write(started["session_id"])
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            except ConnectionClosed as closed:
                print(f"close {closed.rcvd.code if closed.rcvd else 'none'} "
                      f"{closed.rcvd.reason if closed.rcvd else ''}")
                return 0
            except TimeoutError:
                pass
            print("no close within the wait")
            return 1
        else:
            raise SystemExit(f"unknown mode {mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
