"""The sample web app of scaleset's example images (stdlib only, Python 3.8+).

Every webapp image carries this same file; what differs is the manifest beside it: the version shown is
read from scaleset-image.json at start, and WEBAPP_HEALTH=unhealthy (set in a manifest's environment)
makes /health fail (HTTP 500) from the start.

    GET  /                          who am I: image, version, instance, address
    GET  /health                    {"ApplicationHealthState": "Healthy"} (500 "Unhealthy" when broken)
    PUT  /health/mode               how /health answers from now on, to drive health probes in demos and
                                    tests: healthy (200, Healthy), unhealthy (200, Unhealthy: the rich
                                    Application Health way), error (500), slow (healthy after 40 s),
                                    wrong-body (200 without the state), down (503)
    PUT  /files/os/<name>           store the body on the OS disk (lost on reimage)
    PUT  /files/data/<lun>/<name>   store the body on data disk <lun> (kept across reimage)
    GET  the same two paths         read the file back, 404 when it is not there
"""

import json
import os
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = json.loads((HERE / "scaleset-image.json").read_text())["osVersion"]
ADDRESS = os.environ.get("SCALESET_INSTANCE_ADDRESS", "127.0.0.1")
PORT = int(os.environ.get("PORT", "8080"))
OS_DISK = Path(os.environ.get("SCALESET_OS_DISK", str(HERE)))
DATA_DISKS = {lun: Path(d) for lun, d in json.loads(os.environ.get("SCALESET_DATA_DISKS", "{}")).items()}
HEALTH_MODES = ("healthy", "unhealthy", "error", "slow", "wrong-body", "down")
health_mode = "error" if os.environ.get("WEBAPP_HEALTH") == "unhealthy" else "healthy"

# A file name is one plain path segment: no "/", and no leading "." (so never "." or "..").
FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
MAX_FILE_BYTES = 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "scaleset-webapp/" + VERSION

    def do_GET(self):
        if self.path == "/":
            instance = os.environ.get("SCALESET_INSTANCE_ID") or os.environ.get("SCALESET_INSTANCE_KEY")
            about = {"image": "webapp", "version": VERSION, "instance": instance, "address": ADDRESS}
            self.send_json(200, about)
        elif self.path == "/health":
            self.answer_health()
        else:
            path = self.file_path()
            if path is None:
                return
            if not path.is_file():
                self.send_json(404, {"error": "no such file"})
                return
            self.send_bytes(200, path.read_bytes(), "application/octet-stream")

    def answer_health(self):
        if health_mode == "slow":
            time.sleep(40)  # beyond a probe's timeout
        if health_mode in ("healthy", "slow"):
            self.send_json(200, {"ApplicationHealthState": "Healthy"})
        elif health_mode == "wrong-body":
            self.send_json(200, {"status": "fine"})
        elif health_mode == "down":
            self.send_json(503, {"error": "down"})
        elif health_mode == "unhealthy":
            self.send_json(200, {"ApplicationHealthState": "Unhealthy"})
        else:
            self.send_json(500, {"ApplicationHealthState": "Unhealthy"})

    def do_PUT(self):
        global health_mode
        if self.path == "/health/mode":
            mode = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode().strip()
            if mode not in HEALTH_MODES:
                self.send_json(400, {"error": f"mode is one of {', '.join(HEALTH_MODES)}"})
                return
            health_mode = mode
            self.send_json(200, {"mode": mode})
            return
        path = self.file_path()
        if path is None:
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_FILE_BYTES:
            self.send_json(413, {"error": f"at most {MAX_FILE_BYTES} bytes"})
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.rfile.read(length))
        self.send_json(201, {"written": length})

    def file_path(self):
        """The file a /files/... path names, or None after answering the error."""
        parts = self.path.split("/")[1:]
        if parts[:2] == ["files", "os"] and len(parts) == 3:
            disk, name = OS_DISK, parts[2]
        elif parts[:2] == ["files", "data"] and len(parts) == 4:
            disk, name = DATA_DISKS.get(parts[2]), parts[3]
            if disk is None:
                self.send_json(404, {"error": f"no data disk with lun {parts[2]}"})
                return None
        else:
            self.send_json(404, {"error": "not found"})
            return None
        if not FILE_NAME.fullmatch(name):
            self.send_json(400, {"error": "file names are letters, digits, '.', '_' and '-'"})
            return None
        return disk / "files" / name

    def send_json(self, status, body):
        self.send_bytes(status, json.dumps(body).encode(), "application/json")

    def send_bytes(self, status, body, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer((ADDRESS, PORT), Handler)
    print(f"webapp {VERSION} listening on http://{ADDRESS}:{PORT}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
