"""The demo manager's HTTP service: /version, /health, /items."""

import argparse
import configparser
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from demo_manager import VERSION
from demo_manager.cluster import parse_endpoints


def load_config(root):
    cp = configparser.ConfigParser(interpolation=None)
    path = os.path.join(root, "etc/demo-manager/manager.ini")
    if not cp.read(path):
        raise SystemExit(f"demo-manager: cannot read {path}")
    return cp


def query(db, sql):
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def listening(port, handler):
    """The server on the socket systemd passes (socket activation: LISTEN_FDS, from fd 3),
    so that a restart queues clients in the socket's backlog; else on 127.0.0.1:port."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS", "0") != "0":
        server = ThreadingHTTPServer(("127.0.0.1", port), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = socket.socket(fileno=3)
        return server
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def main(argv):
    ap = argparse.ArgumentParser(prog="demo-manager")
    ap.add_argument("--root", default="/")
    args = ap.parse_args(argv)
    cfg = load_config(args.root)
    port = cfg.getint("server", "port")
    db = os.path.join(args.root, cfg.get("database", "path"))
    peers = parse_endpoints(cfg.get("cluster", "endpoints", fallback=""))

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code, body, ctype="application/json"):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/version":
                self._send(200, VERSION + "\n", "text/plain")
            elif self.path == "/health":
                try:
                    query(db, "SELECT 1")
                    self._send(200, json.dumps({"status": "ok", "version": VERSION, "peers": peers}))
                except sqlite3.Error as e:
                    self._send(503, json.dumps({"status": "db-error", "error": str(e)}))
            elif self.path == "/items":
                rows = query(db, "SELECT id, name FROM items ORDER BY id")
                self._send(200, json.dumps([list(r) for r in rows]))
            else:
                self._send(404, json.dumps({"error": "not found"}))

        def log_message(self, fmt, *a):
            pass

    server = listening(port, Handler)
    # a stop answers the requests in hand before the process ends: a connection accepted
    # and then dropped is a reset the client sees, one left in the backlog is not
    server.daemon_threads = False
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"demo-manager {VERSION} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
