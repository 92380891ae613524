"""A small Kaggle on loopback that the *real* kaggle package (kaggle 2.x, kagglesdk) talks to: the
client's ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` endpoint pointed at an ephemeral port (``serve``).

It answers the handful of calls the kit makes — save a kernel, its session status, its output
listing and files, the kernel itself (``kernels pull``), GPU quota, dataset status / blob upload /
create / version, competition data download, models and variations and their versions, token
introspection — reading and writing the client's own request and reply types (kagglesdk's), so what
the kit sees is what the client returns: enums, reply objects, ``HTTPError`` from error answers.

Each pushed kernel runs for real, in a thread: a fresh ``working`` folder and an input root with its
declared sources mounted as Kaggle mounts them (``layout`` kind or flat; ``kzlib.kaggle.emulate``),
at most two GPU sessions at a time (a third push is refused as the service refuses it).

Strict where Kaggle is strict:

- every API call carries the account's key (HTTP basic auth) or token (bearer): anything else is
  HTTP 401; a dataset, kernel or model of another owner is HTTP 403 (status and output reads
  included, which the client turns into ``ValueError``);
- kernel slugs are lowercase words joined by single hyphens, 5-50 characters, and a new kernel's
  title must make its slug; dataset slugs and titles 6-50 characters; ``machine_shape`` must be
  one of Kaggle's names and ``docker_image`` one of its images (``gcr.io/kaggle-.../python@sha256:``);
  all of these are HTTP 400;
- a competition that does not exist, or whose rules the account has not accepted
  (``rules_accepted``), is named in the push reply's ``invalid_competition_sources`` (the kernel
  runs without it); its data download is HTTP 404 / 403;
- version labels are ``v<N>`` (a bare number is HTTP 404, as on Kaggle);
- creating a dataset, model or variation that exists is HTTP 409;
- the weekly GPU quota (``quota_hours``: allowed, used) refuses GPU pushes once used up, until
  ``quota_refresh_at``, when it starts again;
- ``rate_limit(route, times, seconds)``: the next ``times`` calls of a route are HTTP 429 with
  ``Retry-After``; a call made before the time it named is answered 429 again and counted in
  ``early_calls``;
- ``cancel(slug)``: the session's state is CANCEL_REQUESTED (it still holds its GPU) until Kaggle
  acknowledges, ``cancel_delay`` later;
- a new model version is ready (listed and mountable) only ``model_delay`` seconds after upload.

Fault switches (attributes, set by a test): ``push_http`` / ``status_http`` / ``output_http``
(answer every SaveKernel / GetKernelSessionStatus / ListKernelSessionOutput with that HTTP status),
``status_http_once`` / ``output_http_once`` (the next N status reads / listings fail with that
status: ``(N, code)``), ``output_lag`` (a finished version's listing stays empty for that many
more listings), ``dataset_state`` (what a new dataset version becomes: READY or FAILED),
``hidden_status`` (datasets whose status is HTTP 404 while they exist, as while Kaggle processes a
new one). ``requests`` records every call: (time, route, request as JSON).
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import re
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
from kagglesdk.kernels.types.kernels_api_service import (ApiGetKernelRequest, ApiGetKernelResponse,
                                                         ApiGetKernelSessionStatusRequest,
                                                         ApiGetKernelSessionStatusResponse, ApiKernelBlob,
                                                         ApiKernelMetadata, ApiKernelSessionOutputFile,
                                                         ApiListKernelSessionOutputRequest,
                                                         ApiListKernelSessionOutputResponse, ApiSaveKernelRequest,
                                                         ApiSaveKernelResponse)
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus
from kagglesdk.models.types.model_api_service import (ApiCreateModelInstanceRequest,
                                                      ApiCreateModelInstanceVersionRequest, ApiCreateModelRequest,
                                                      ApiCreateModelResponse, ApiGetModelInstanceRequest,
                                                      ApiGetModelRequest, ApiModel, ApiModelInstance)
from kagglesdk.security.types.oauth_service import IntrospectTokenRequest, IntrospectTokenResponse
from slugify import slugify

from kzlib.kaggle.emulate import mount

GPU_SESSIONS = 2
SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# kagglesdk's ApiCreateKernelSessionRequest names NvidiaTeslaT4, NvidiaTeslaP100, Tpu1VmV38; the CLI's
# docs add NvidiaL4 and TpuV5E8 (P100 and TPU v3-8 are retired: sessions run on a replacement)
MACHINE_SHAPES = {"NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "TpuV5E8", "Tpu1VmV38"}
IMAGE = "gcr.io/kaggle-gpu-images/python@sha256:" + "a1" * 32   # "today's" image of this Kaggle
DAY = 24 * 3600


class HttpFail(Exception):
    """An error answer: ``{"code": N, "message": ...}`` with HTTP status N, as Kaggle's API writes it."""
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class FakeKaggle:
    def __init__(self, root: Path, user: str = "test", data: Path | None = None, layout: str = "kind",
                 quota_hours: tuple[float, float] = (30.0, 4.5), token: str = "tok-123", key: str = "key-123"):
        self.root, self.user, self.layout, self.token = Path(root), user, layout, token
        self.accounts = {user: key}             # user -> API key (``user`` also owns ``token``)
        self.competitions = {"kuzushiji-recognition": Path(data)} if data else {}
        self.rules_accepted = set(self.competitions)
        self.quota_hours = list(quota_hours)
        self.quota_refresh_at = time.time() + 3 * DAY
        self.image = IMAGE                      # the image a new kernel gets today
        self.images = {IMAGE}                   # every image this Kaggle knows
        self.kernels: dict[str, list[dict]] = {}
        self.owners: dict[str, str] = {}        # kernel slug -> its owner
        self.datasets: dict[str, list[Path]] = {}
        self.dataset_states: dict[str, str] = {}
        self.hidden_status: set[str] = set()
        self.models: dict[str, dict] = {}
        self.blobs: dict[str, dict] = {}
        self.calls: list[str] = []
        self.requests: list[tuple[float, str, dict]] = []
        self.push_http: int | None = None
        self.status_http: int | None = None
        self.output_http: int | None = None
        self.status_http_once: tuple[int, int] = (0, 0)
        self.output_http_once: tuple[int, int] = (0, 0)
        self.output_lag = 0
        self.limits: dict[str, list] = {}       # route -> [calls left to refuse, seconds, refused until, late]
        self.early_calls = 0
        self.cancel_delay = 0.5
        self.model_delay = 0.0
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

    # ------------------------------------------------------------------ who asks, how often
    def account(self, authorization: str) -> str:
        """The account a request's Authorization header proves, or HTTP 401."""
        kind, _, value = (authorization or "").partition(" ")
        if kind == "Bearer" and value == self.token:
            return self.user
        if kind == "Basic":
            user, _, key = base64.b64decode(value).decode(errors="replace").partition(":")
            if user in self.accounts and key == self.accounts[user]:
                return user
        raise HttpFail(401, "Unauthenticated: no valid API key or access token")

    def rate_limit(self, route: str, times: int = 1, seconds: float = 1.0, late: float = 0.0) -> None:
        """The next ``times`` calls of ``route`` (e.g. "SaveKernel") are answered 429 + Retry-After,
        each refusal ``late`` seconds after the call came (a slow server: the wait counts from the answer)."""
        self.limits[route] = [times, seconds, 0.0, late]

    def limited(self, name: str) -> float | None:
        """Seconds to put in Retry-After when this call is refused, else None."""
        limit = self.limits.get(name.rsplit("/", 1)[-1])
        if limit is None:
            return None
        now = time.time()
        if now < limit[2]:  # asked again before the time the last answer named
            self.early_calls += 1
            return limit[2] - now
        if limit[0] <= 0:
            return None
        if limit[3]:
            time.sleep(limit[3])
            now = time.time()
        limit[0] -= 1
        limit[2] = now + limit[1]
        return limit[1]

    def _own(self, owner: str, me: str, what: str) -> None:
        if owner != me:
            raise HttpFail(403, f"Permission '{what}' was denied")

    # ------------------------------------------------------------------ kernels
    def running_gpu(self) -> int:
        return sum(v["gpu"] and v["state"] in ("QUEUED", "RUNNING", "CANCEL_REQUESTED")
                   for vs in self.kernels.values() for v in vs)

    def gpu_quota_left(self) -> float:
        if time.time() >= self.quota_refresh_at:  # a new week
            self.quota_hours[1] = 0.0
            self.quota_refresh_at += 7 * DAY
        return self.quota_hours[0] - self.quota_hours[1]

    def _check_kernel(self, req: ApiSaveKernelRequest, slug: str) -> None:
        if not (5 <= len(slug) <= 50 and SLUG.match(slug)):
            raise HttpFail(400, f"Invalid kernel slug {slug!r}: lowercase letters, digits and hyphens, 5-50 characters")
        if slug not in self.kernels:  # a new kernel: its slug comes from its title
            title = req.new_title or ""
            if not 5 <= len(title) <= 50 or slugify(title) != slug:
                raise HttpFail(400, f"The title {title!r} does not make the slug {slug!r} (5-50 characters)")
        if req.machine_shape and req.machine_shape not in MACHINE_SHAPES:
            raise HttpFail(400, f"Invalid machine shape {req.machine_shape!r}")
        if req.docker_image and req.docker_image not in self.images:
            raise HttpFail(400, f"Invalid docker image {req.docker_image!r}: not a Kaggle image")

    def save_kernel(self, req: ApiSaveKernelRequest, me: str) -> ApiSaveKernelResponse:
        if self.push_http:
            raise HttpFail(self.push_http, {400: "Invalid kernel metadata", 401: "Unauthenticated",
                                            403: "Permission denied"}.get(self.push_http, "error"))
        out = ApiSaveKernelResponse()
        owner, slug = req.slug.split("/")
        self._own(owner, me, "kernels.edit")
        if slug in self.owners:
            self._own(self.owners[slug], me, "kernels.edit")
        self._check_kernel(req, slug)
        if req.enable_gpu and self.running_gpu() >= GPU_SESSIONS:
            out.error = f"Maximum batch GPU session count of {GPU_SESSIONS} reached."
            return out
        if req.enable_gpu and self.gpu_quota_left() <= 0:
            out.error = ("You've exceeded the number of hours allowed to use GPU. Your quota will reset to "
                         f"{self.quota_hours[0]:g} hours at the next refresh.")
            return out
        invalid_ds = [s for s in req.dataset_data_sources if s not in self.datasets]
        invalid_c = [c for c in req.competition_data_sources if c not in self.competitions or c not in self.rules_accepted]
        invalid_k = [s for s in req.kernel_data_sources
                     if s.split("/")[1] not in self.kernels or not self._complete(s.split("/")[1])]
        invalid_m = [s for s in req.model_data_sources if self._model_folder(s) is None]
        with self.lock:
            versions = self.kernels.setdefault(slug, [])
            self.owners[slug] = owner
            n = len(versions) + 1
            base = self.root / "kernels" / slug / f"v{n}"
            working, inputs = base / "working", base / "input"
            working.mkdir(parents=True)
            inputs.mkdir(parents=True)
            for s in req.dataset_data_sources:
                if s in self.datasets:
                    mount(inputs, self.layout, "datasets", s, self.datasets[s][-1])
            for c in req.competition_data_sources:
                if c not in invalid_c:
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
            if req.docker_image:
                image = req.docker_image
            elif req.docker_image_pinning_type == "original" and versions:
                image = versions[0]["meta"]["docker_image"]
            else:
                image = self.image
            version = {"n": n, "gpu": bool(req.enable_gpu), "state": "QUEUED", "working": working, "input": inputs,
                       "log": base / "kernel.log", "script": base / "kernel.py", "failure": "", "proc": None,
                       "title": req.new_title or slug, "lag": self.output_lag,
                       "meta": {"docker_image_pinning_type": req.docker_image_pinning_type, "docker_image": image,
                                "machine_shape": req.machine_shape, "model_sources": list(req.model_data_sources)}}
            versions.append(version)
        threading.Thread(target=self._run, args=(version,), daemon=True).start()
        out.ref, out.version_number, out.url = f"/code/{owner}/{slug}", n, f"{self.url}/code/{owner}/{slug}"
        out.invalid_dataset_sources, out.invalid_kernel_sources = invalid_ds, invalid_k
        out.invalid_competition_sources, out.invalid_model_sources = invalid_c, invalid_m
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
        if v["state"] == "CANCEL_REQUESTED":
            return  # Kaggle acknowledges the cancel itself (``cancel``)
        if code:
            v["failure"] = f"Your notebook tried to run, but the kernel exited with code {code}."
        v["state"] = "COMPLETE" if code == 0 else "ERROR"

    def cancel(self, slug: str) -> None:
        """The user stops the kernel's running session (the web UI's "Cancel run")."""
        v = self.kernels[slug][-1]
        v["state"] = "CANCEL_REQUESTED"
        if v["proc"] is not None:
            v["proc"].kill()
        threading.Timer(self.cancel_delay, lambda: v.update(state="CANCEL_ACKNOWLEDGED")).start()

    def _version(self, owner: str, slug: str, label: str, me: str) -> dict:
        versions = self.kernels.get(slug)
        if not versions:
            raise HttpFail(404, f"Kernel {owner}/{slug} not found")
        self._own(self.owners[slug], me, "kernels.get")
        if not label:
            return versions[-1]
        m = re.fullmatch(r"v(\d+)", label)  # Kaggle wants "v2"; a bare "2" is not found
        if not m or not 1 <= int(m.group(1)) <= len(versions):
            raise HttpFail(404, f"Version {label!r} of {slug} not found")
        return versions[int(m.group(1)) - 1]

    @staticmethod
    def _once(switch: tuple[int, int]) -> tuple[tuple[int, int], int | None]:
        left, code = switch
        return ((left - 1, code), code) if left > 0 else (switch, None)

    def status(self, req: ApiGetKernelSessionStatusRequest, me: str) -> ApiGetKernelSessionStatusResponse:
        if self.status_http:
            raise HttpFail(self.status_http, "Not found" if self.status_http == 404 else "error")
        self.status_http_once, code = self._once(self.status_http_once)
        if code:
            raise HttpFail(code, "Permission 'kernels.get' was denied" if code in (401, 403) else "error")
        v = self._version(req.user_name, req.kernel_slug, req.version_label, me)
        out = ApiGetKernelSessionStatusResponse()
        out.status = KernelWorkerStatus[v["state"]]
        out.failure_message = v["failure"]
        return out

    def output(self, req: ApiListKernelSessionOutputRequest, me: str) -> ApiListKernelSessionOutputResponse:
        if self.output_http:
            raise HttpFail(self.output_http, "error")
        self.output_http_once, code = self._once(self.output_http_once)
        if code:
            raise HttpFail(code, "Internal error" if code >= 500 else "Permission 'kernels.get' was denied")
        v = self._version(req.user_name, req.kernel_slug, req.version_label, me)
        out = ApiListKernelSessionOutputResponse()
        files = []
        lagging = v["state"] == "COMPLETE" and v["lag"] > 0  # the listing catches up after the session ends
        if lagging:
            v["lag"] -= 1
        for f in [] if lagging else sorted(v["working"].rglob("*")):
            if f.is_file() and not f.is_symlink():
                item = ApiKernelSessionOutputFile()
                item.file_name = f.relative_to(v["working"]).as_posix()
                item.url = f"{self.url}/files/kernels/{req.kernel_slug}/{v['n']}/{item.file_name}"
                files.append(item)
        out.files = files
        out.log = v["log"].read_text(errors="replace") if v["log"].exists() else ""
        return out

    def get_kernel(self, req: ApiGetKernelRequest, me: str) -> ApiGetKernelResponse:
        v = self._version(req.user_name, req.kernel_slug, req.version_label, me)
        meta = ApiKernelMetadata()
        meta.ref, meta.slug, meta.title = f"{self.owners[req.kernel_slug]}/{req.kernel_slug}", req.kernel_slug, v["title"]
        meta.language, meta.kernel_type, meta.enable_gpu = "python", "script", v["gpu"]
        meta.docker_image, meta.machine_shape = v["meta"]["docker_image"], v["meta"]["machine_shape"] or ""
        meta.current_version_number = len(self.kernels[req.kernel_slug])
        blob = ApiKernelBlob()
        blob.source, blob.language, blob.kernel_type, blob.slug = v["script"].read_text(), "python", "script", req.kernel_slug
        out = ApiGetKernelResponse()
        out.metadata, out.blob = meta, blob
        return out

    def quota(self) -> dict:
        """As the service writes it ("<seconds>s"; kagglesdk's own writer would drop whole days)."""
        self.gpu_quota_left()
        allowed, used = (int(h * 3600) for h in self.quota_hours)
        refresh = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.quota_refresh_at))
        return {"gpuQuota": {"totalTimeAllowed": f"{allowed}s", "timeUsed": f"{used}s"},
                "quotaRefreshTime": f"{refresh}.{int(self.quota_refresh_at % 1 * 1000):03d}Z"}

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

    def create_dataset(self, req, ref: str, me: str) -> ApiCreateDatasetResponse:
        owner, slug = ref.split("/")
        self._own(owner, me, "datasets.edit")
        new = isinstance(req, ApiCreateDatasetRequest)
        if new:
            if ref in self.datasets:
                raise HttpFail(409, f"Dataset {ref} already exists")
            if not 6 <= len(slug) <= 50 or not SLUG.match(slug) or not 6 <= len(req.title or "") <= 50:
                raise HttpFail(400, f"Invalid dataset slug or title for {ref} (6-50 characters each)")
        elif ref not in self.datasets:
            raise HttpFail(404, f"Dataset {ref} not found")
        files = req.files if new else req.body.files
        versions = self.datasets.setdefault(ref, [])
        versions.append(self._unpack([f.token for f in files], self.root / "datasets" / ref / f"v{len(versions) + 1}"))
        self.dataset_states[ref] = self.dataset_state
        out = ApiCreateDatasetResponse()
        out.ref, out.url, out.status = ref, f"{self.url}/datasets/{ref}", "ok"
        return out

    def dataset_status(self, req: ApiGetDatasetStatusRequest) -> ApiGetDatasetStatusResponse:
        ref = f"{req.owner_slug}/{req.dataset_slug}"
        if ref not in self.datasets or ref in self.hidden_status:
            raise HttpFail(404, f"Dataset {ref} not found")
        out = ApiGetDatasetStatusResponse()
        out.status = DatabundleVersionStatus[self.dataset_states[ref]]
        return out

    # ------------------------------------------------------------------ models
    def _ready(self, versions: list[dict]) -> list[dict]:
        """A model version is listed and mountable once Kaggle has processed it (``model_delay``)."""
        now = time.time()
        return [v for v in versions if v["ready_at"] <= now]

    def _model_folder(self, source: str) -> Path | None:
        parts = source.split("/")
        if len(parts) != 5:
            return None
        owner, model, framework, variation, version = parts
        versions = self._ready(self.models.get(f"{owner}/{model}", {}).get("instances", {}).get(variation, []))
        return versions[int(version) - 1]["folder"] if version.isdigit() and 1 <= int(version) <= len(versions) else None

    def get_model(self, req: ApiGetModelRequest) -> ApiModel:
        ref = f"{req.owner_slug}/{req.model_slug}"
        if ref not in self.models:
            raise HttpFail(404, f"Model {ref} not found")
        out = ApiModel()
        out.slug = req.model_slug
        return out

    def create_model(self, req: ApiCreateModelRequest, me: str) -> ApiCreateModelResponse:
        self._own(req.owner_slug, me, "models.create")
        if f"{req.owner_slug}/{req.slug}" in self.models:
            raise HttpFail(409, f"Model {req.owner_slug}/{req.slug} already exists")
        self.models[f"{req.owner_slug}/{req.slug}"] = {"instances": {}}
        out = ApiCreateModelResponse()
        out.ref = f"{req.owner_slug}/{req.slug}"
        return out

    def get_instance(self, req: ApiGetModelInstanceRequest) -> ApiModelInstance:
        versions = self.models.get(f"{req.owner_slug}/{req.model_slug}", {}).get("instances", {}).get(req.instance_slug)
        ready = self._ready(versions or [])
        if not ready:
            raise HttpFail(404, f"Model instance {req.instance_slug} not found")
        out = ApiModelInstance()
        out.slug, out.version_number = req.instance_slug, len(ready)
        return out

    def add_instance_version(self, owner: str, model: str, instance: str, files, me: str,
                             new: bool) -> ApiCreateModelResponse:
        if f"{owner}/{model}" not in self.models:
            raise HttpFail(404, f"Model {owner}/{model} not found")
        self._own(owner, me, "models.edit")
        instances = self.models[f"{owner}/{model}"]["instances"]
        if new and instance in instances:
            raise HttpFail(409, f"Model instance {owner}/{model}/pytorch/{instance} already exists")
        if not new and instance not in instances:
            raise HttpFail(404, f"Model instance {instance} not found")
        versions = instances.setdefault(instance, [])
        folder = self.root / "models" / owner / model / "pytorch" / instance / str(len(versions) + 1)
        versions.append({"folder": self._unpack([f.token for f in files], folder),
                         "ready_at": time.time() + self.model_delay})
        out = ApiCreateModelResponse()
        out.ref = f"{owner}/{model}/pytorch/{instance}"
        return out

    def introspect(self, req: IntrospectTokenRequest) -> IntrospectTokenResponse:
        out = IntrospectTokenResponse()
        out.active = req.token == self.token
        out.username = self.user if out.active else ""
        return out


def _handler(k: FakeKaggle):
    # route -> (request type, fn(request, account)); None: no request body
    routes = {
        "kernels.KernelsApiService/SaveKernel": (ApiSaveKernelRequest, k.save_kernel),
        "kernels.KernelsApiService/GetKernelSessionStatus": (ApiGetKernelSessionStatusRequest, k.status),
        "kernels.KernelsApiService/ListKernelSessionOutput": (ApiListKernelSessionOutputRequest, k.output),
        "kernels.KernelsApiService/GetKernel": (ApiGetKernelRequest, k.get_kernel),
        "kernels.KernelsApiService/GetAcceleratorQuotaStatistics": (None, lambda _, me: k.quota()),
        "blobs.BlobApiService/StartBlobUpload": (ApiStartBlobUploadRequest, lambda r, me: k.start_blob(r)),
        "datasets.DatasetApiService/CreateDataset": (
            ApiCreateDatasetRequest, lambda r, me: k.create_dataset(r, f"{r.owner_slug}/{r.slug}", me)),
        "datasets.DatasetApiService/CreateDatasetVersion": (
            ApiCreateDatasetVersionRequest, lambda r, me: k.create_dataset(r, f"{r.owner_slug}/{r.dataset_slug}", me)),
        "datasets.DatasetApiService/GetDatasetStatus": (ApiGetDatasetStatusRequest, lambda r, me: k.dataset_status(r)),
        "models.ModelApiService/GetModel": (ApiGetModelRequest, lambda r, me: k.get_model(r)),
        "models.ModelApiService/CreateModel": (ApiCreateModelRequest, k.create_model),
        "models.ModelApiService/GetModelInstance": (ApiGetModelInstanceRequest, lambda r, me: k.get_instance(r)),
        "models.ModelApiService/CreateModelInstance": (
            ApiCreateModelInstanceRequest,
            lambda r, me: k.add_instance_version(r.owner_slug, r.model_slug, r.body.instance_slug, r.body.files, me,
                                                 new=True)),
        "models.ModelApiService/CreateModelInstanceVersion": (
            ApiCreateModelInstanceVersionRequest,
            lambda r, me: k.add_instance_version(r.owner_slug, r.model_slug, r.instance_slug, r.body.files, me,
                                                 new=False)),
        "security.OAuthService/IntrospectToken": (IntrospectTokenRequest, lambda r, me: k.introspect(r)),
    }
    public = {"security.OAuthService/IntrospectToken"}  # the token to check is the request itself

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

        def _fail(self, e: HttpFail, headers: dict | None = None):
            return self._send(e.code, json.dumps({"code": e.code, "message": e.message}).encode(), headers=headers)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else "{}"
            name = self.path.removeprefix("/api/v1/")
            k.calls.append(name)
            k.requests.append((time.time(), name, json.loads(body or "{}")))
            try:
                me = None if name in public else k.account(self.headers.get("Authorization", ""))
            except HttpFail as e:
                return self._fail(e)
            wait = k.limited(name)
            if wait is not None:
                return self._fail(HttpFail(429, "Too many requests"), {"Retry-After": f"{max(1, round(wait))}"})
            if name == "competitions.CompetitionApiService/DownloadDataFiles":
                competition = json.loads(body or "{}").get("competitionName", "")
                if competition not in k.competitions:
                    return self._fail(HttpFail(404, f"Competition {competition} not found"))
                if competition not in k.rules_accepted:
                    return self._fail(HttpFail(403, "You must accept this competition's rules before you'll be able "
                                                    "to download files."))
                self.send_response(302)
                self.send_header("Location", f"{k.url}/files/competition/{competition}.zip")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if name not in routes:
                return self._send(404, json.dumps({"code": 404, "message": f"no route {name}"}).encode())
            cls, fn = routes[name]
            try:
                reply = fn(cls.from_json(body) if cls else None, me)
            except HttpFail as e:
                return self._fail(e)
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


def serve(fake: FakeKaggle, monkeypatch, token: bool = False, user: str | None = None, key: str | None = None) -> None:
    """Point the real kaggle client at ``fake``: kagglesdk's LOCALHOST endpoint, redirected to its
    port; credentials as an API key (``user`` and ``key``, by default the fake's own account's), or
    the fake's access token with ``token``."""
    from kagglesdk import kaggle_env

    monkeypatch.setitem(kaggle_env._env_to_endpoint, kaggle_env.KaggleEnv.LOCAL, fake.url)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(fake.root / "kaggle-config"))
    monkeypatch.setenv("HOME", str(fake.root / "home"))
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    if token:
        monkeypatch.setenv("KAGGLE_API_TOKEN", fake.token)
    else:
        monkeypatch.setenv("KAGGLE_USERNAME", user or fake.user)
        monkeypatch.setenv("KAGGLE_KEY", key or fake.accounts[user or fake.user])
    # the client reads KAGGLE_API_ENVIRONMENT once, when its module is first imported (KaggleApi.args);
    # an earlier test in this process may have imported it already
    from kaggle.api.kaggle_api_extended import KaggleApi

    if "--local" not in KaggleApi.args:
        monkeypatch.setattr(KaggleApi, "args", [*KaggleApi.args, "--local"])
    config_dir = fake.root / "kaggle-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(KaggleApi, "config_dir", str(config_dir))
    monkeypatch.setattr(KaggleApi, "config", str(config_dir / KaggleApi.config_file))
