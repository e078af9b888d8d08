"""A recording server on 127.0.0.1 that answers the real ``kaggle`` client the way Kaggle's API does.

The client is pointed at it the way its own source allows:
``KAGGLE_API_ENVIRONMENT=LOCALHOST`` makes kagglesdk send to ``http://localhost``
and ``HTTP_PROXY`` routes that through 127.0.0.1:PORT, so the server sees the
absolute URL of e.g. ``POST /api/v1/kernels.KernelsApiService/SaveKernel``.
Every request is recorded; the answers follow the response types of kagglesdk
(``kernels_api_service``, ``competition_api_service``, ``dataset_api_service``)
as the client 2.2.5 reads them. ``Kaggle`` holds what the server knows: which
datasets exist, each kernel's latest version, run state and output files (per
version where a test says so), and which access tokens belong to whom.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "0123456789abcdef0123456789abcdef"  # a fake API key: must never land in a bundle or a request body
TOKEN = "KGAT_fedcba9876543210fedcba9876543210"  # a fake access token (kaggle 2.x login), the same rule


@dataclass
class Kaggle:
    """The server's world. ``datasets`` None: every dataset source exists."""

    requests: list = field(default_factory=list)
    datasets: set | None = None
    competitions: tuple = ("landmark-recognition-2021",)
    versions: dict = field(default_factory=dict)  # "owner/slug" -> latest version
    # "owner/slug" (any version) or "owner/slug/vN" (version N) -> (KernelWorkerStatus name, failure message)
    status: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)  # "owner/slug" or "owner/slug/vN" -> {file name: bytes}
    logs: dict = field(default_factory=dict)  # "owner/slug" -> log text
    submissions: int = 0
    created: set = field(default_factory=set)  # "owner/slug" of the datasets `datasets create` made here
    tokens: dict = field(default_factory=lambda: {TOKEN: "alice"})  # access token -> user name
    port: int = 0  # set by start()

    def posts(self, method: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"].endswith("/" + method)]

    def exists(self, ref: str) -> bool:
        return ref in self.created | (self.datasets or set())

    def of_version(self, table: dict, body: dict, default=None):
        """The entry of ``table`` for the kernel (and version label) a request names."""
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        label = body.get("versionLabel")
        if label and f"{ref}/{label}" in table:
            return table[f"{ref}/{label}"]
        return table.get(ref, default)


class _Handler(BaseHTTPRequestHandler):
    world: Kaggle

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.world.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                    "body": body})
        method = self.path.rsplit("/", 1)[-1]
        answer = getattr(self, f"_{method}", self._dataset)(body)
        if isinstance(answer, tuple):
            self._reply(answer[0], json.dumps(answer[1]).encode())
        else:
            self._reply(200, json.dumps(answer).encode())

    def do_PUT(self):  # noqa: N802
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.world.requests.append({"method": "PUT", "path": self.path, "headers": dict(self.headers), "body": data})
        self._reply(200, b"{}")

    def do_GET(self):  # noqa: N802
        self.world.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers), "body": b""})
        # Output files are served at http://localhost/output/<owner>/<slug>[/vN]/<name>.
        _, _, rest = self.path.partition("/output/")
        owner, slug, name = (rest.split("/", 2) + ["", "", ""])[:3]
        version, _, inner = name.partition("/")
        if f"{owner}/{slug}/{version}" in self.world.outputs:
            owner, slug, name = owner, f"{slug}/{version}", inner
        files = self.world.outputs.get(f"{owner}/{slug}", {})
        if name in files:
            self._reply(200, files[name], "application/octet-stream")
        else:
            self._reply(404, b"not found", "text/plain")

    # -- kernels.KernelsApiService ---------------------------------------------------------------------
    def _SaveKernel(self, body):  # noqa: N802
        slug = body.get("slug", "")
        if slug.startswith("refused/"):
            return {"ref": "", "url": "", "error": "Notebook not found or you do not own it"}
        version = self.world.versions.get(slug, 6) + 1
        self.world.versions[slug] = version
        known = self.world.datasets
        answer = {"ref": f"/code/{slug}", "url": f"http://localhost/code/{slug}", "versionNumber": version,
                  "error": None}
        # A source is "owner/slug" or "owner/slug/version"; Kaggle refuses one that does not exist (once the
        # test lists what exists: then a dataset made here through `datasets create` exists too).
        bad = [d for d in body.get("datasetDataSources", [])
               if known is not None and not self.world.exists("/".join(d.split("/")[:2]))]
        if bad:
            answer["invalidDatasetSources"] = bad
        bad = [c for c in body.get("competitionDataSources", []) if c not in self.world.competitions]
        if bad:
            answer["invalidCompetitionSources"] = bad
        return answer

    def _GetKernelSessionStatus(self, body):  # noqa: N802
        found = self.world.of_version(self.world.status, body)
        if found is None:
            return 403, {"code": 403, "message": "Permission 'kernels.get' was denied"}
        state, failure = found
        return {"status": state, "failureMessage": failure or None}

    def _ListKernelSessionOutput(self, body):  # noqa: N802
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        label = body.get("versionLabel")
        where = f"{ref}/{label}" if label and f"{ref}/{label}" in self.world.outputs else ref
        files = [{"url": f"http://localhost/output/{where}/{name}", "fileName": name}
                 for name in sorted(self.world.outputs.get(where, {}))]
        return {"files": files, "log": self.world.logs.get(ref), "nextPageToken": ""}

    # -- competitions.CompetitionApiService --------------------------------------------------------------
    def _CreateCodeSubmission(self, body):  # noqa: N802
        ref = f"{body.get('kernelOwner')}/{body.get('kernelSlug')}"
        if body.get("competitionName") not in self.world.competitions:
            return 404, {"code": 404, "message": "Competition not found"}
        if body.get("kernelVersion", 0) > self.world.versions.get(ref, 0):
            return 404, {"code": 404, "message": "Kernel version not found"}
        self.world.submissions += 1
        return {"message": "Your submission was successfully saved", "ref": 50000 + self.world.submissions}

    def _GetSubmissionLimits(self, body):  # noqa: N802
        return {"numToday": self.world.submissions, "numTotal": self.world.submissions,
                "numAllowedNow": 5 - self.world.submissions}

    # -- datasets.DatasetApiService (and blob uploads) ----------------------------------------------------
    def _StartBlobUpload(self, body):  # noqa: N802
        n = len(self.world.requests)
        return {"token": f"blob-token-{n}", "createUrl": f"http://localhost/upload/{n}"}

    def _GetDatasetStatus(self, body):  # noqa: N802
        # `datasets create` asks first and refuses a slug in use: only the datasets made here, or listed, exist.
        if not self.world.exists(f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"):
            return 404, {"code": 404, "message": "Not found"}
        return {"status": "ready"}

    def _CreateDataset(self, body):  # noqa: N802
        self.world.created.add(f"{body.get('ownerSlug')}/{body.get('slug')}")
        return self._dataset(body)

    def _CreateDatasetVersion(self, body):  # noqa: N802
        # A new version of a dataset Kaggle does not have is refused.
        if not self.world.exists(f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"):
            return 404, {"code": 404, "message": "Dataset not found"}
        return self._dataset(body)

    # -- security.OAuthService: how kaggle 2.x finds the user of an access token ---------------------------
    def _IntrospectToken(self, body):  # noqa: N802
        user = self.world.tokens.get(body.get("token", ""))
        return {"active": user is not None, "username": user or ""}

    def _dataset(self, body):
        return {"ref": "alice/dataset", "url": "http://localhost/datasets/alice/dataset", "status": "ok",
                "error": None}

    def _reply(self, status, reply, kind="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def start(world: Kaggle) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"world": world})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    world.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
