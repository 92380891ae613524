"""A small Kaggle on loopback that the *real* kaggle package (kaggle 2.x, kagglesdk) talks to: the
client's ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` endpoint pointed at an ephemeral port (``serve``).

It answers the handful of calls the kit makes — save a kernel, its session status, its output
listing and files, GPU quota, dataset status / blob upload / create / version, competition data
download, models and variations and their versions, token introspection — reading and writing
the client's own request and reply types (kagglesdk's), so what the kit sees is what the client
returns: enums, reply objects, ``HTTPError`` from error answers.

Each pushed kernel runs for real, in a thread: a fresh ``working`` folder and an input root with its
declared sources mounted as Kaggle mounts them (``layout`` kind or flat; ``kzlib.kaggle.emulate``),
at most two GPU sessions at a time (a third push is refused as the service refuses it).

Fault switches (attributes, set by a test): ``push_http`` / ``status_http`` / ``output_http``
(answer every SaveKernel / GetKernelSessionStatus / ListKernelSessionOutput with that HTTP status),
``output_http_once`` (the next N listings fail with HTTP 500), ``dataset_state`` (what a new
dataset version becomes: READY or FAILED).
"""

from __future__ import annotations

import email.utils
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kagglesdk.blobs.types.blob_api_service import ApiStartBlobUploadRequest, ApiStartBlobUploadResponse
from kagglesdk.datasets.types.dataset_api_service import (ApiCreateDatasetRequest, ApiCreateDatasetResponse,
                                                          ApiCreateDatasetVersionRequest, ApiGetDatasetStatusRequest,
                                                          ApiGetDatasetStatusResponse)
from kagglesdk.datasets.types.dataset_enums import DatabundleVersionStatus
from kagglesdk.kernels.types.kernels_api_service import (ApiGetKernelSessionStatusRequest,
                                                         ApiGetKernelSessionStatusResponse, ApiKernelSessionOutputFile,
                                                         ApiListKernelSessionOutputRequest,
                                                         ApiListKernelSessionOutputResponse, ApiSaveKernelRequest,
                                                         ApiSaveKernelResponse)
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus
from kagglesdk.models.types.model_api_service import (ApiCreateModelInstanceRequest,
                                                      ApiCreateModelInstanceVersionRequest, ApiCreateModelRequest,
                                                      ApiCreateModelResponse, ApiGetModelInstanceRequest,
                                                      ApiGetModelRequest, ApiModel, ApiModelInstance)
from kagglesdk.security.types.oauth_service import IntrospectTokenRequest, IntrospectTokenResponse

from kzlib.kaggle.emulate import mount

GPU_SESSIONS = 2


class HttpFail(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FakeKaggle:
    def __init__(self, root: Path, user: str = "test", data: Path | None = None, layout: str = "kind",
                 quota_hours: tuple[float, float] = (30.0, 4.5), token: str = "tok-123"):
        self.root, self.user, self.layout, self.token = Path(root), user, layout, token
        self.competitions = {"kuzushiji-recognition": Path(data)} if data else {}
        self.quota_hours = quota_hours
        self.kernels: dict[str, list[dict]] = {}
        self.datasets: dict[str, list[Path]] = {}
        self.dataset_states: dict[str, str] = {}
        self.models: dict[str, dict] = {}
        self.blobs: dict[str, dict] = {}
        self.calls: list[str] = []
        self.push_http: int | None = None
        self.status_http: int | None = None
        self.output_http: int | None = None
        self.output_http_once = 0
        self.dataset_state = "READY"
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeKaggle":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        for versions in self.kernels.values():
            for v in versions:
                if v.get("proc") is not None and v["proc"].poll() is None:
                    v["proc"].kill()

    # ------------------------------------------------------------------ kernels
    def running_gpu(self) -> int:
        return sum(v["gpu"] and v["state"] in ("QUEUED", "RUNNING") for vs in self.kernels.values() for v in vs)

    def save_kernel(self, req: ApiSaveKernelRequest) -> ApiSaveKernelResponse:
        if self.push_http:
            raise HttpFail(self.push_http, {400: "Invalid kernel metadata", 401: "Unauthenticated",
                                            403: "Permission denied"}.get(self.push_http, "error"))
        out = ApiSaveKernelResponse()
        owner, slug = req.slug.split("/")
        if req.enable_gpu and self.running_gpu() >= GPU_SESSIONS:
            out.error = f"Maximum batch GPU session count of {GPU_SESSIONS} reached."
            return out
        invalid_ds = [s for s in req.dataset_data_sources if s not in self.datasets]
        invalid_k = [s for s in req.kernel_data_sources
                     if s.split("/")[1] not in self.kernels or not self._complete(s.split("/")[1])]
        invalid_m = [s for s in req.model_data_sources if self._model_folder(s) is None]
        with self.lock:
            versions = self.kernels.setdefault(slug, [])
            n = len(versions) + 1
            base = self.root / "kernels" / slug / f"v{n}"
            working, inputs = base / "working", base / "input"
            working.mkdir(parents=True)
            inputs.mkdir(parents=True)
            for s in req.dataset_data_sources:
                if s in self.datasets:
                    mount(inputs, self.layout, "datasets", s, self.datasets[s][-1])
            for c in req.competition_data_sources:
                mount(inputs, self.layout, "competitions", c, self.competitions[c])
            for s in req.kernel_data_sources:
                done = self._complete(s.split("/")[1])
                if done is not None:
                    mount(inputs, self.layout, "notebooks", s, done["working"])
            for s in req.model_data_sources:
                folder = self._model_folder(s)
                if folder is not None:
                    link = inputs / ("models/" + s if self.layout == "kind" else s.split("/", 1)[1])
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(folder.resolve(), target_is_directory=True)
            (base / "kernel.py").write_text(req.text)
            version = {"n": n, "gpu": bool(req.enable_gpu), "state": "QUEUED", "working": working, "input": inputs,
                       "log": base / "kernel.log", "script": base / "kernel.py", "failure": "", "proc": None,
                       "meta": {"docker_image_pinning_type": req.docker_image_pinning_type,
                                "machine_shape": req.machine_shape, "model_sources": list(req.model_data_sources)}}
            versions.append(version)
        threading.Thread(target=self._run, args=(version,), daemon=True).start()
        out.ref, out.version_number, out.url = f"/code/{owner}/{slug}", n, f"{self.url}/code/{owner}/{slug}"
        out.invalid_dataset_sources, out.invalid_kernel_sources = invalid_ds, invalid_k
        out.invalid_model_sources = invalid_m
        return out

    def _complete(self, slug: str) -> dict | None:
        done = [v for v in self.kernels.get(slug, []) if v["state"] == "COMPLETE"]
        return done[-1] if done else None

    def _run(self, v: dict) -> None:
        env = {**os.environ, "KAGGLE_INPUT_ROOT": str(v["input"]), "KAGGLE_WORKING": str(v["working"]),
               "PYTHONDONTWRITEBYTECODE": "1"}
        env.pop("PYTHONPATH", None)  # kzlib comes from the mounted dataset, as on Kaggle
        for key in [k for k in env if k.startswith("KAGGLE_API") or k in ("KAGGLE_USERNAME", "KAGGLE_KEY")]:
            env.pop(key)
        v["state"] = "RUNNING"
        with open(v["log"], "w") as fh:
            v["proc"] = subprocess.Popen([sys.executable, str(v["script"])], cwd=v["working"], env=env, stdout=fh,
                                         stderr=subprocess.STDOUT)
            code = v["proc"].wait()
        if code:
            v["failure"] = f"Your notebook tried to run, but the kernel exited with code {code}."
        v["state"] = "COMPLETE" if code == 0 else "ERROR"

    def _version(self, slug: str, label: str) -> dict:
        versions = self.kernels.get(slug)
        if not versions:
            raise HttpFail(404, f"Kernel {slug} not found")
        if not label:
            return versions[-1]
        n = int(label.lstrip("v"))
        if not 1 <= n <= len(versions):
            raise HttpFail(404, f"Version {label} of {slug} not found")
        return versions[n - 1]

    def status(self, req: ApiGetKernelSessionStatusRequest) -> ApiGetKernelSessionStatusResponse:
        if self.status_http:
            raise HttpFail(self.status_http, "Not found" if self.status_http == 404 else "error")
        v = self._version(req.kernel_slug, req.version_label)
        out = ApiGetKernelSessionStatusResponse()
        out.status = KernelWorkerStatus[v["state"]]
        out.failure_message = v["failure"]
        return out

    def output(self, req: ApiListKernelSessionOutputRequest) -> ApiListKernelSessionOutputResponse:
        if self.output_http:
            raise HttpFail(self.output_http, "error")
        if self.output_http_once:
            self.output_http_once -= 1
            raise HttpFail(500, "Internal error")
        v = self._version(req.kernel_slug, req.version_label)
        out = ApiListKernelSessionOutputResponse()
        files = []
        for f in sorted(v["working"].rglob("*")):
            if f.is_file() and not f.is_symlink():
                item = ApiKernelSessionOutputFile()
                item.file_name = f.relative_to(v["working"]).as_posix()
                item.url = f"{self.url}/files/kernels/{req.kernel_slug}/{v['n']}/{item.file_name}"
                files.append(item)
        out.files = files
        out.log = v["log"].read_text(errors="replace") if v["log"].exists() else ""
        return out

    def quota(self) -> dict:
        """As the service writes it ("<seconds>s"; kagglesdk's own writer would drop whole days)."""
        allowed, used = (int(h * 3600) for h in self.quota_hours)
        return {"gpuQuota": {"totalTimeAllowed": f"{allowed}s", "timeUsed": f"{used}s"},
                "quotaRefreshTime": "2026-12-05T00:00:00Z"}

    # ------------------------------------------------------------------ datasets, blobs
    def start_blob(self, req: ApiStartBlobUploadRequest) -> ApiStartBlobUploadResponse:
        token = f"blob{len(self.blobs) + 1}"
        self.blobs[token] = {"name": req.name, "path": self.root / "blobs" / token}
        out = ApiStartBlobUploadResponse()
        out.token, out.create_url = token, f"{self.url}/upload/{token}"
        return out

    def _unpack(self, tokens: list[str], folder: Path) -> Path:
        """Uploaded files into ``folder``; a folder uploaded zipped (NAME.zip) is unpacked into NAME/."""
        folder.mkdir(parents=True)
        for token in tokens:
            blob = self.blobs[token]
            if blob["name"].endswith(".zip"):
                with zipfile.ZipFile(blob["path"]) as z:
                    z.extractall(folder / blob["name"][:-4])
            else:
                shutil.copyfile(blob["path"], folder / blob["name"])
        return folder

    def create_dataset(self, req, ref: str) -> ApiCreateDatasetResponse:
        files = req.files if isinstance(req, ApiCreateDatasetRequest) else req.body.files
        versions = self.datasets.setdefault(ref, [])
        versions.append(self._unpack([f.token for f in files], self.root / "datasets" / ref / f"v{len(versions) + 1}"))
        self.dataset_states[ref] = self.dataset_state
        out = ApiCreateDatasetResponse()
        out.ref, out.url, out.status = ref, f"{self.url}/datasets/{ref}", "ok"
        return out

    def dataset_status(self, req: ApiGetDatasetStatusRequest) -> ApiGetDatasetStatusResponse:
        ref = f"{req.owner_slug}/{req.dataset_slug}"
        if ref not in self.datasets:
            raise HttpFail(404, f"Dataset {ref} not found")
        out = ApiGetDatasetStatusResponse()
        out.status = DatabundleVersionStatus[self.dataset_states[ref]]
        return out

    # ------------------------------------------------------------------ models
    def _model_folder(self, source: str) -> Path | None:
        parts = source.split("/")
        if len(parts) != 5:
            return None
        owner, model, framework, variation, version = parts
        versions = self.models.get(f"{owner}/{model}", {}).get("instances", {}).get(variation, [])
        return versions[int(version) - 1] if version.isdigit() and 1 <= int(version) <= len(versions) else None

    def get_model(self, req: ApiGetModelRequest) -> ApiModel:
        ref = f"{req.owner_slug}/{req.model_slug}"
        if ref not in self.models:
            raise HttpFail(404, f"Model {ref} not found")
        out = ApiModel()
        out.slug = req.model_slug
        return out

    def create_model(self, req: ApiCreateModelRequest) -> ApiCreateModelResponse:
        self.models[f"{req.owner_slug}/{req.slug}"] = {"instances": {}}
        out = ApiCreateModelResponse()
        out.ref = f"{req.owner_slug}/{req.slug}"
        return out

    def get_instance(self, req: ApiGetModelInstanceRequest) -> ApiModelInstance:
        versions = self.models.get(f"{req.owner_slug}/{req.model_slug}", {}).get("instances", {}).get(req.instance_slug)
        if not versions:
            raise HttpFail(404, f"Model instance {req.instance_slug} not found")
        out = ApiModelInstance()
        out.slug, out.version_number = req.instance_slug, len(versions)
        return out

    def add_instance_version(self, owner: str, model: str, instance: str, files) -> ApiCreateModelResponse:
        if f"{owner}/{model}" not in self.models:
            raise HttpFail(404, f"Model {owner}/{model} not found")
        versions = self.models[f"{owner}/{model}"]["instances"].setdefault(instance, [])
        folder = self.root / "models" / owner / model / "pytorch" / instance / str(len(versions) + 1)
        versions.append(self._unpack([f.token for f in files], folder))
        out = ApiCreateModelResponse()
        out.ref = f"{owner}/{model}/pytorch/{instance}"
        return out

    def introspect(self, req: IntrospectTokenRequest) -> IntrospectTokenResponse:
        out = IntrospectTokenResponse()
        out.active = req.token == self.token
        out.username = self.user if out.active else ""
        return out


def _handler(k: FakeKaggle):
    routes = {
        "kernels.KernelsApiService/SaveKernel": (ApiSaveKernelRequest, k.save_kernel),
        "kernels.KernelsApiService/GetKernelSessionStatus": (ApiGetKernelSessionStatusRequest, k.status),
        "kernels.KernelsApiService/ListKernelSessionOutput": (ApiListKernelSessionOutputRequest, k.output),
        "kernels.KernelsApiService/GetAcceleratorQuotaStatistics": (None, lambda _: k.quota()),
        "blobs.BlobApiService/StartBlobUpload": (ApiStartBlobUploadRequest, k.start_blob),
        "datasets.DatasetApiService/CreateDataset": (
            ApiCreateDatasetRequest, lambda r: k.create_dataset(r, f"{r.owner_slug}/{r.slug}")),
        "datasets.DatasetApiService/CreateDatasetVersion": (
            ApiCreateDatasetVersionRequest, lambda r: k.create_dataset(r, f"{r.owner_slug}/{r.dataset_slug}")),
        "datasets.DatasetApiService/GetDatasetStatus": (ApiGetDatasetStatusRequest, k.dataset_status),
        "models.ModelApiService/GetModel": (ApiGetModelRequest, k.get_model),
        "models.ModelApiService/CreateModel": (ApiCreateModelRequest, k.create_model),
        "models.ModelApiService/GetModelInstance": (ApiGetModelInstanceRequest, k.get_instance),
        "models.ModelApiService/CreateModelInstance": (
            ApiCreateModelInstanceRequest,
            lambda r: k.add_instance_version(r.owner_slug, r.model_slug, r.body.instance_slug, r.body.files)),
        "models.ModelApiService/CreateModelInstanceVersion": (
            ApiCreateModelInstanceVersionRequest,
            lambda r: k.add_instance_version(r.owner_slug, r.model_slug, r.instance_slug, r.body.files)),
        "security.OAuthService/IntrospectToken": (IntrospectTokenRequest, k.introspect),
    }

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else "{}"
            name = self.path.removeprefix("/api/v1/")
            k.calls.append(name)
            if name == "competitions.CompetitionApiService/DownloadDataFiles":
                self.send_response(302)
                self.send_header("Location", f"{k.url}/files/competition/kuzushiji-recognition.zip")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if name not in routes:
                return self._send(404, json.dumps({"code": 404, "message": f"no route {name}"}).encode())
            cls, fn = routes[name]
            try:
                reply = fn(cls.from_json(body) if cls else None)
            except HttpFail as e:
                return self._send(e.code, json.dumps({"code": e.code, "message": e.message}).encode())
            self._send(200, (json.dumps(reply) if isinstance(reply, dict) else type(reply).to_json(reply)).encode())

        def do_GET(self):
            parts = self.path.split("/")
            if self.path.startswith("/files/kernels/"):
                _, _, _, slug, n, *rel = parts
                f = k.kernels[slug][int(n) - 1]["working"].joinpath(*rel)
                return self._file(f.read_bytes())
            if self.path.startswith("/files/competition/"):
                return self._file(_competition_zip(next(iter(k.competitions.values()))))
            self._send(404, b"{}")

        def _file(self, data: bytes):
            self._send(200, data, "application/octet-stream",
                       {"Last-Modified": email.utils.formatdate(time.time(), usegmt=True), "Accept-Ranges": "none"})

        def do_PUT(self):
            token = self.path.rsplit("/", 1)[1]
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            path = k.blobs[token]["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            self._send(200, b"{}")

    return Handler


def _competition_zip(data: Path) -> bytes:
    """The competition's archive as Kaggle serves it: the CSV files, and the images in two inner zips."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in ("train.csv", "unicode_translation.csv", "sample_submission.csv"):
            z.write(data / name, name)
        for folder in ("train_images", "test_images"):
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w") as iz:
                for f in sorted((data / folder).iterdir()):
                    iz.write(f, f.name)
            z.writestr(f"{folder}.zip", inner.getvalue())
    return out.getvalue()


def serve(fake: FakeKaggle, monkeypatch, token: bool = False) -> None:
    """Point the real kaggle client at ``fake``: kagglesdk's LOCALHOST endpoint, redirected to its
    port; credentials as an API key (or an access token, with ``token``)."""
    from kagglesdk import kaggle_env

    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, fake.url)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(fake.root / "kaggle-config"))
    monkeypatch.setenv("HOME", str(fake.root / "home"))
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    if token:
        monkeypatch.setenv("KAGGLE_API_TOKEN", fake.token)
    else:
        monkeypatch.setenv("KAGGLE_USERNAME", fake.user)
        monkeypatch.setenv("KAGGLE_KEY", "key-123")
    # the client reads KAGGLE_API_ENVIRONMENT once, when its module is first imported (KaggleApi.args);
    # an earlier test in this process may have imported it already
    from kaggle.api.kaggle_api_extended import KaggleApi

    if "--local" not in KaggleApi.args:
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])
    config_dir = fake.root / "kaggle-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(KaggleApi, "config_dir", str(config_dir))
    monkeypatch.setattr(KaggleApi, "config", str(config_dir / KaggleApi.config_file))
