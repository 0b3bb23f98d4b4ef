"""A loopback stand-in for the Hugging Face Hub (the `hub` fixture of conftest.py starts one per test)."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class HubStub:
    """The endpoints a push needs (hf_ecosystem.md §11): create, info, tree, settings, preupload, commit. Repos live in
    `store` (repo -> path -> bytes) with `private` (repo -> bool) and `commits` (repo -> list of (added, deleted)).
    Bound to 127.0.0.1, and stopped by the fixture."""

    def __init__(self):
        self.store: dict[str, dict[str, bytes]] = {}
        self.private: dict[str, bool] = {}
        self.commits: dict[str, list[tuple[list[str], list[str]]]] = {}
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, payload=None, headers=()):
                body = json.dumps(payload if payload is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _repo(self, parts):
                """`/api/models/org/name/...` -> "org/name" if it exists."""
                repo = "/".join(parts[3:5])
                return repo if parts[:3] == ["", "api", "models"] and repo in stub.store else None

            def _missing(self):
                return self._reply(404, {"error": "Repository not found"}, [("X-Error-Code", "RepoNotFound")])

            def do_HEAD(self):
                stub.requests.append(f"HEAD {self.path}")
                self._reply(404)

            def do_GET(self):
                stub.requests.append(f"GET {self.path}")
                parts = urlsplit(self.path).path.split("/")
                repo = self._repo(parts)
                if repo is None:
                    return self._missing()
                sha = stub.sha(repo)
                if len(parts) == 5 or parts[5] == "revision":  # model_info
                    siblings = [{"rfilename": name} for name in sorted(stub.store[repo])]
                    info = {
                        "id": repo,
                        "modelId": repo,
                        "private": stub.private[repo],
                        "sha": sha,
                        "siblings": siblings,
                    }
                    return self._reply(200, info)
                if parts[5] == "tree":  # list_repo_files (recursive)
                    files = [
                        {"type": "file", "path": name, "oid": "0" * 40, "size": len(content)}
                        for name, content in sorted(stub.store[repo].items())
                    ]
                    return self._reply(200, files)
                return self._reply(404)

            def do_PUT(self):
                stub.requests.append(f"PUT {self.path}")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                parts = urlsplit(self.path).path.split("/")
                repo = self._repo(parts)
                if repo is None:
                    return self._missing()
                if parts[5:] == ["settings"]:
                    if "visibility" in body:
                        stub.private[repo] = body["visibility"] == "private"
                    if "private" in body:
                        stub.private[repo] = bool(body["private"])
                    return self._reply(200, {})
                return self._reply(404)

            def do_POST(self):
                stub.requests.append(f"POST {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = urlsplit(self.path).path
                if path == "/api/repos/create":
                    payload = json.loads(body)
                    name = payload["name"]
                    repo = f"{payload.get('organization') or 'user'}/{name}" if "/" not in name else name
                    if repo in stub.store:
                        return self._reply(409, {"error": "You already created this model repo", "url": repo})
                    stub.create(repo, private=payload.get("visibility") == "private" or bool(payload.get("private")))
                    return self._reply(200, {"url": f"http://127.0.0.1/{repo}", "name": repo, "id": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                parts = path.split("/")
                repo = self._repo(parts)
                if repo is None:
                    return self._missing()
                if "preupload" in parts:
                    files = json.loads(body)["files"]
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": answer})
                if "commit" in parts:
                    added, deleted = [], []
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        value = item["value"]
                        if item["key"] == "header" and value.get("parentCommit") not in (None, stub.sha(repo)):
                            return self._reply(412, {"error": "A commit has happened since"})
                        if item["key"] == "file":
                            added.append(value["path"])
                            stub.store[repo][value["path"]] = base64.b64decode(value["content"])
                        if item["key"] == "deletedFile":
                            deleted.append(value["path"])
                            stub.store[repo].pop(value["path"])
                    stub.commits[repo].append((added, deleted))
                    oid = stub.sha(repo)
                    return self._reply(200, {"commitUrl": f"http://127.0.0.1/{repo}/commit/{oid}", "commitOid": oid})
                return self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 10
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def create(self, repo: str, private: bool = False, files: dict[str, bytes] | None = None) -> None:
        self.store[repo] = {".gitattributes": b"*.safetensors filter=lfs\n", **(files or {})}
        self.private[repo] = private
        self.commits[repo] = []

    def sha(self, repo: str) -> str:
        return f"{len(self.commits[repo]) + 1:040x}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"
