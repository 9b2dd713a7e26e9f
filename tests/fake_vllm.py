"""A stand-in for ``vllm serve`` on 127.0.0.1: the same command line, the OpenAI endpoints vichat uses.

``python tests/fake_vllm.py serve MODEL --host H --port P --served-model-name NAME [--enable-lora]
[--lora-modules name=path ...] [other vLLM flags]`` serves ``/v1/models`` (the served name and
every LoRA module) and ``/v1/completions`` with ``stream: true``, answering as vLLM does: an unknown
``model`` is a 404, and the text streamed is ``"<model> trả lời: Xin chào!"`` followed by a made-up
next turn (``"\\n### Instruction: ..."``) split over chunks, which the client must cut. The argv and
every request body are appended as JSON lines to ``$FAKE_VLLM_LOG``. With ``$FAKE_VLLM_FAIL`` set it
prints that text (a start-up failure as vLLM logs it) and exits with code 1 instead.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse(argv: list[str]) -> dict:
    if not argv or argv[0] != "serve" or len(argv) < 2:
        raise SystemExit("usage: fake_vllm.py serve MODEL [vllm flags]")
    opts: dict = {"model": argv[1], "lora": [], "flags": []}
    i = 2
    while i < len(argv):
        arg = argv[i]
        if arg == "--lora-modules":
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                opts["lora"].append(argv[i].split("=", 1)[0])
                i += 1
            continue
        if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts[arg.lstrip("-").replace("-", "_")] = argv[i + 1]
            i += 2
        else:
            opts["flags"].append(arg)
            i += 1
    return opts


def main() -> None:
    opts = parse(sys.argv[1:])
    log_path = os.environ.get("FAKE_VLLM_LOG")
    names = [opts.get("served_model_name", opts["model"])] + opts["lora"]

    def record(obj: dict) -> None:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")

    record({"argv": sys.argv[1:]})
    if os.environ.get("FAKE_VLLM_FAIL"):
        print(os.environ["FAKE_VLLM_FAIL"], file=sys.stderr)
        raise SystemExit(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def send_json(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
            else:
                self.send_json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            record({"path": self.path, "body": body})
            if body.get("model") not in names:
                self.send_json(404, {"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                               "type": "NotFoundError", "code": 404}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            texts = (f"{body['model']} trả lời:", " Xin chào!", "\n###", " Instr", "uction: bịa", "")
            for i, text in enumerate(texts):
                finish = "stop" if i == len(texts) - 1 else None  # vLLM's last chunk says why it ended
                event = {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")

    server = ThreadingHTTPServer((opts.get("host", "127.0.0.1"), int(opts.get("port", 8000))), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
