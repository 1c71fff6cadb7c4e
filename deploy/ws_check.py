#!/usr/bin/env python3
"""A minimal WebSocket client (standard library only) for deploy/check-image.sh.

  ws_check.py realtime ws://127.0.0.1:PORT/ws/realtime
      session_started, one sample, its step_detection; exit 0 when both came.
  ws_check.py stats ws://127.0.0.1:PORT/ws/realtime
      one sample, then {"action":"stats"}; prints server_stats as JSON.
  ws_check.py hold ws://127.0.0.1:PORT/ws/realtime READY_FILE [SECONDS]
      one sample and its reply, writes READY_FILE, then waits (bounded) for
      the server to close the socket and prints `close CODE REASON`.

Loopback only: anything else is refused.
"""

import base64
import json
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

SAMPLE = {"x": 0.1, "y": 9.8, "z": 0.3}


class Closed(Exception):
    def __init__(self, code, reason):
        super().__init__(f"close {code} {reason}")
        self.code = code
        self.reason = reason


class Ws:
    def __init__(self, url, timeout=10.0):
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or 80
        if parts.scheme != "ws" or host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"refusing {url}: ws:// on loopback only")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise SystemExit("connection closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            raise SystemExit(f"handshake refused: {status}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(1006, "connection dropped without a close frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, obj):
        self._send(0x1, json.dumps(obj).encode())

    def recv_json(self):
        """The next text message, as JSON; answers pings; raises Closed."""
        while True:
            b0, b1 = self._read(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._read(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._read(8))
            payload = self._read(n)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                try:
                    self._send(0x8, payload[:2])
                except OSError:
                    pass
                raise Closed(code, payload[2:].decode(errors="replace"))
            if opcode == 0x9:
                self._send(0xA, payload)


def expect(ws, kind):
    msg = ws.recv_json()
    if msg.get("type") != kind:
        raise SystemExit(f"expected {kind}, got {json.dumps(msg)}")
    return msg


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    mode, url = argv[1], argv[2]
    ws = Ws(url)
    started = expect(ws, "session_started")
    ws.send_json(SAMPLE)
    reply = expect(ws, "step_detection")
    if mode == "realtime":
        print(json.dumps(started))
        print(json.dumps(reply))
    elif mode == "stats":
        ws.send_json({"action": "stats"})
        print(json.dumps(expect(ws, "stats_response")["server_stats"]))
    elif mode == "hold":
        ready, seconds = argv[3], float(argv[4]) if len(argv) > 4 else 60.0
        with open(ready, "w") as f:
            f.write(started["session_id"] + "\n")
        ws.sock.settimeout(seconds)
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                ws.recv_json()
        except Closed as closed:
            print(f"close {closed.code} {closed.reason}")
            return 0
        except socket.timeout:
            pass
        print("no close within the wait")
        return 1
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
