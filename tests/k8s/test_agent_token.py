"""The node agent re-reads its token file for every push: the projected ServiceAccount token
the kubelet rotates (k8s/base/agent-daemonset.yaml, expirationSeconds 3600) never goes stale."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agents.main import build_agent, parse_args


def test_agent_presents_the_token_file_as_it_is_now(tmp_path):
    seen: list[str] = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["Authorization"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("first.jwt.token\n")
    try:
        args = parse_args(["--broker-url", f"http://127.0.0.1:{server.server_address[1]}", "--token-file", str(token),
                           "--node-id", "gpu-1", "--fake-gpus", "1"])
        sender = build_agent(args, 1.0).pusher.sender
        assert sender.send(b"{}").status == 200
        token.write_text("rotated.jwt.token\n")  # what the kubelet does at 80 % of the token's life
        assert sender.send(b"{}").status == 200
    finally:
        server.shutdown()
        server.server_close()
    assert seen == ["Bearer first.jwt.token", "Bearer rotated.jwt.token"]
