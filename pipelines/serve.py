"""``paretoslider serve``: a trained slider behind Ray Serve, with a web page of one slider per objective.

Routes (FastAPI ingress; OpenAPI schema at ``/openapi.json``, docs at ``/docs`` and ``/redoc``):

- ``POST /v1/generate`` ``{prompt, preference, seed, steps, width, height, source_image?, frames?}``
  -> PNG (``Accept: application/json`` -> JSON with the PNG in base64, plus the points of point-cloud
  models): the generated image of image models, a scatter of the samples of point-cloud models;
  video models answer a looping animated WebP (JSON: the WebP, and each frame as PNG with ``frames``).
  Image and video models need a prompt, editing models a source image too. The preference actually used is in the ``X-Preference`` header / ``preference`` field.
  Concurrent requests are generated together with ``@serve.batch``.
- ``GET /v1/objectives``: the objectives in ``w`` order, what they mean, and what the model takes.
- ``GET /healthz``; ``GET /``: the slider page.

The docs pages load Swagger UI / ReDoc from the ``fastapi-offline`` package through this endpoint
(``/static-offline-docs/*``), not from a CDN, so they work on a cluster without internet.

Bad input is answered 4xx with the field named (422 in FastAPI's ``detail`` shape, 413 for a body
over ``serve.max_body_bytes``, 401 without the bearer token when ``serve.require_token``); nothing
on the wire is pickled. Serve's HTTP proxy is cluster-wide: the reward servers reuse whatever Serve
runs, so the endpoint starts Serve first with its own host/port, and refuses to start if a Serve
with other HTTP options already runs in the cluster.
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods' annotations after Serve
# rebinds them, and string annotations would turn ``request: Request`` into a query parameter.
import asyncio
import base64
import hashlib
import hmac
import json
import io
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from infra.config import Config, ServeConfig
from infra.ray_init import start_ray
from pipelines.slider_model import SliderModel
from pipelines.slider_render import frames_png, video_webp
from pipelines.slider_requests import GenerationSpec, InvalidRequest

APP_NAME = "slider"
PAGE = Path(__file__).with_name("slider_page.html")
DEFAULT_POINTS_SIZE = 320
"""Side of the scatter PNG of point-cloud models when the request gives no size (image models
default to the size they generate at)."""


class GenerateRequest(BaseModel):
    """Body of ``POST /v1/generate``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    preference: list[float] | dict[str, float]
    """Weights in objective order, or ``{objective: weight}``; scaled to sum 1."""
    prompt: str = ""
    """Text prompt (editing models: the instruction); required by models that use one."""
    seed: int = Field(0, ge=0, le=2**31 - 1)
    steps: int | None = Field(None, ge=1)
    """Sampler steps (default: the training sampler's)."""
    width: int | None = Field(None, ge=16)
    """Width of the answered PNG (image models generate at their own size; the PNG is resized)."""
    height: int | None = Field(None, ge=16)
    source_image: str | None = None
    """Editing models (required there): the source image, base64 PNG or JPEG (``data:`` URLs are
    fine), resized to the model's size."""
    frames: bool = False
    """Video models, JSON answers: also give every frame as a base64 PNG (``frames_png_base64``)."""


class GenerateResponse(BaseModel):
    """JSON answer of ``POST /v1/generate``."""

    preference: dict[str, float]
    seed: int
    steps: int
    width: int
    height: int
    output_kind: str
    image_png_base64: str
    """The picture: scatter (point clouds), image, or first frame of a video."""
    points: list[list[float]] | None = None
    """Point-cloud models: the generated samples."""
    video_webp_base64: str | None = None
    """Video models: the video as a looping, lossless animated WebP at ``frame_rate``."""
    frame_rate: float | None = None
    """Video models: frames per second."""
    frames_png_base64: list[str] | None = None
    """Video models, when the request sets ``frames``: every frame as a PNG."""


def token_digest(token: str) -> str:
    """What the replicas keep of the bearer token (the token itself never leaves the driver)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    loc = ["body", field] if field else ["body"]
    return JSONResponse({"detail": [{"loc": loc, "msg": message, "type": "value_error"}]}, status_code=status)


GENERATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerateRequest.model_json_schema()}}}}
"""The body schema for OpenAPI (the route reads the body itself, to bound its size)."""

# validatorUrl=None: Swagger UI would otherwise send the schema URL of a non-localhost endpoint to
# validator.swagger.io for a badge (a broken image offline, and a leak of the endpoint's address).
api = FastAPIOffline(title="ParetoSlider", version="1", swagger_ui_parameters={"validatorUrl": None},
                     description="One preference-conditioned model; move the preference along the Pareto front.")


@api.exception_handler(InvalidRequest)
async def _invalid_request(request: Request, err: InvalidRequest) -> JSONResponse:
    return _error(422, err.field, err.message)


@serve.deployment
@serve.ingress(api)
class SliderServer:
    """One replica: the model, its request checks, and batched generation."""

    def __init__(self, source: "ModelSource", limits: dict[str, Any], token_sha256: str | None):
        # The model directory lives as long as the replica, on the replica's own node.
        self._model_dir = tempfile.TemporaryDirectory(prefix="paretoslider-replica-")
        self.model = SliderModel.from_model_dir(source.fetch(Path(self._model_dir.name)))
        self.limits = ServeConfig.model_validate(limits)
        self.token_sha256 = token_sha256
        self._generate_batch.set_max_batch_size(self.limits.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.limits.batch_wait_timeout_s)
        self.batch_sizes: list[int] = []
        self.page = PAGE.read_text()

    # ---- routes ---------------------------------------------------------------------------------
    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        """Liveness, whether ``/v1/*`` needs a token, and this replica's batching counters."""
        return {"status": "ok", "auth_required": self.token_sha256 is not None,
                "requests": sum(self.batch_sizes), "batches": len(self.batch_sizes)}

    @api.get("/v1/objectives")
    async def objectives(self, request: Request) -> dict[str, Any]:
        """The objectives in preference order, what each means, and what the model takes."""
        if (denied := self._authorize(request)) is not None:
            return denied
        m = self.model
        return {"objectives": [asdict(o) for o in m.objectives],
                "model": {"kind": m.cfg.model.kind, **asdict(m.io), "step": m.step,
                          "default_steps": m.default_steps, "max_steps": self.limits.max_steps,
                          "max_size": self.limits.max_size, "max_prompt_chars": self.limits.max_prompt_chars}}

    @api.post("/v1/generate", response_model=GenerateResponse, openapi_extra=GENERATE_BODY,
              responses={200: {"content": {"image/png": {}, "image/webp": {}},
                               "description": "PNG (video models: animated WebP), or JSON when asked"},
                         401: {"description": "missing or wrong bearer token"},
                         413: {"description": "body too large"}, 422: {"description": "a field is invalid"}})
    async def generate(self, request: Request) -> Response:
        """Generate at the requested preference: PNG (video models: animated WebP), or JSON with
        ``Accept: application/json``."""
        if (denied := self._authorize(request)) is not None:
            return denied
        body = await self.read_body(request)
        if isinstance(body, JSONResponse):
            return body
        spec, width, height = self.check(body)
        output = await self._generate_batch(spec)
        kind, fps = self.model.io.output_kind, self.model.cfg.model.diffusers.frame_rate
        png = await asyncio.to_thread(self.model.to_png, output, spec.preference, width, height)
        webp = await asyncio.to_thread(video_webp, output[0], width, height, fps) if kind == "video" else None
        used = dict(zip(self.model.objective_labels, spec.preference))
        if "application/json" in request.headers.get("accept", ""):
            video = {} if webp is None else {"video_webp_base64": _b64(webp), "frame_rate": fps}
            if body.frames:
                frames = await asyncio.to_thread(frames_png, output[0], width, height)
                video["frames_png_base64"] = [_b64(f) for f in frames]
            return JSONResponse(GenerateResponse(
                preference=used, seed=spec.seed, steps=spec.steps, width=width, height=height, output_kind=kind,
                image_png_base64=_b64(png), points=output.tolist() if kind == "points" else None,
                **video).model_dump())
        if webp is not None:
            return Response(webp, media_type="image/webp", headers={"X-Preference": json.dumps(used)})
        return Response(png, media_type="image/png", headers={"X-Preference": json.dumps(used)})

    # ---- checks and batching --------------------------------------------------------------------
    def _authorize(self, request: Request) -> JSONResponse | None:
        if self.token_sha256 is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token_digest(token.strip()), self.token_sha256):
            return None
        return JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> "GenerateRequest | JSONResponse":
        """The body, read up to ``max_body_bytes`` (413 past it, chunked or not) and validated (422)."""
        limit = self.limits.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return _error(413, None, f"request body of {length} bytes is over the limit of {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, None, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        try:
            return GenerateRequest.model_validate_json(b"".join(chunks))
        except ValidationError as err:
            return JSONResponse({"detail": [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                                            for e in err.errors()]}, status_code=422)

    def check(self, body: GenerateRequest) -> tuple[GenerationSpec, int, int]:
        """Every config-dependent limit; ``InvalidRequest`` (-> 422) names the first bad field."""
        lim, m = self.limits, self.model
        if len(body.prompt) > lim.max_prompt_chars:
            raise InvalidRequest("prompt", f"has {len(body.prompt)} characters; the limit is {lim.max_prompt_chars}")
        preference = m.check_preference(body.preference)
        steps = body.steps or m.default_steps
        if steps > lim.max_steps:
            raise InvalidRequest("steps", f"is {steps}; the limit is {lim.max_steps}")
        size = {}
        for field, native in zip(("width", "height"), m.native_size or (DEFAULT_POINTS_SIZE, DEFAULT_POINTS_SIZE)):
            value = getattr(body, field) or native
            if value > lim.max_size:
                raise InvalidRequest(field, f"is {value}; the limit is {lim.max_size}")
            size[field] = value
        if body.frames and m.io.output_kind != "video":
            raise InvalidRequest("frames", f"this {m.cfg.model.kind} model makes {m.io.output_kind}, not videos")
        source = m.check_inputs(body.prompt, body.source_image, lim.max_size)
        samples = lim.points_per_request if m.io.output_kind == "points" else 1
        spec = GenerationSpec(preference, body.seed, steps, samples, body.prompt, source)
        return spec, size["width"], size["height"]

    @serve.batch
    async def _generate_batch(self, specs: list[GenerationSpec]):
        self.batch_sizes.append(len(specs))
        # A worker thread keeps the event loop answering (and queueing the next batch) meanwhile.
        return await asyncio.to_thread(self.model.generate, specs)


# ---- deploying ----------------------------------------------------------------------------------
def start_serve_http(host: str, port: int) -> None:
    """Start Serve with this HTTP address, or check that the running Serve already has it."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        serve.start(http_options={"host": host, "port": port})
        return
    running = client.http_config
    if (running.host, running.port) != (host, port):
        raise RuntimeError(
            f"Ray Serve already runs in this cluster with HTTP on {running.host}:{running.port}, not "
            f"{host}:{port} (serve.host/serve.port); Serve has one HTTP address per cluster: start the "
            "endpoint before other Serve apps (e.g. a training job's reward servers), or set serve.port to it")


@dataclass(frozen=True)
class ModelSource:
    """Where each replica fetches the model directory from, on its own node: an MLflow artifact URI
    (registered and logged models; each replica downloads it), or, for a local source, a tar of the
    directory in Ray's object store (alive while the driver that deployed it is)."""

    uri: str | None = None
    tracking_uri: str | None = None
    packed: Any = None
    """``ray.ObjectRef`` of the tar's bytes (local sources)."""

    def fetch(self, dst: Path) -> Path:
        import ray

        from pipelines.registry import download_model_dir

        if self.uri is not None:
            return download_model_dir(self.uri, self.tracking_uri, dst)
        with tarfile.open(fileobj=io.BytesIO(ray.get(self.packed))) as tar:
            tar.extractall(dst, filter="data")
        return dst / MODEL_DIR


MODEL_DIR = "slider"


def model_source(source: "str | Path", tracking_uri: "str | None") -> "tuple[ModelSource, bytes | None]":
    """Check a source without loading its model (its manifest and, for a run directory, its files) and
    say how replicas get it; local sources also give the tar the driver puts in the object store."""
    from pipelines.registry import artifact_uri, download_model_dir, is_uri, local_model_dir
    from pipelines.slider_artifact import RunWeights, read_manifest, write_model_dir

    if is_uri(source):
        from infra.tracking import resolve_tracking_uri

        # Resolved here, once: a replica's own environment or working directory must not change it.
        tracking_uri = resolve_tracking_uri(tracking_uri)
        uri = artifact_uri(str(source), tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            read_manifest(download_model_dir(uri, tracking_uri, tmp, manifest_only=True))
        return ModelSource(uri=uri, tracking_uri=tracking_uri), None
    path = Path(source)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = local_model_dir(path)
        if model_dir is None:
            if not (path / "config.yaml").is_file():
                raise FileNotFoundError(f"{source} is neither a models:/ or runs:/ URI, a slider model directory "
                                        "nor a training run directory (config.yaml + checkpoints/)")
            model_dir = Path(tmp) / MODEL_DIR
            write_model_dir(RunWeights.read(path), path, model_dir)
        read_manifest(model_dir)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:  # uncompressed: weights do not compress
            tar.add(model_dir, arcname=MODEL_DIR)
    return ModelSource(), buf.getvalue()


@dataclass
class SliderEndpoint:
    """A running slider app; ``close()`` deletes it (and releases a local model's object)."""

    url: str
    source: ModelSource

    def close(self) -> None:
        serve.delete(APP_NAME)


def deploy_slider(cfg: Config, source: "str | Path", tracking_uri: "str | None" = None) -> SliderEndpoint:
    """Check the source in the driver (bad sources fail here; no model is loaded), deploy the replicas,
    each of which loads the model from the registry / artifact store (or the object store) itself.

    ``cfg`` gives ``serve.*`` and ``ray.*``; the model brings its own training config.
    """
    import ray

    s = cfg.serve
    token = None
    if s.require_token:
        token = os.environ.get(s.token_env)
        if not token:
            raise ValueError(f"serve.require_token is set but the environment variable {s.token_env} "
                             "(serve.token_env) is empty")
    model, packed = model_source(source, tracking_uri or cfg.tracking.tracking_uri)
    start_ray(cfg.ray)
    if packed is not None:
        model = ModelSource(packed=ray.put(packed))
    start_serve_http(s.host, s.port)
    app = SliderServer.options(
        num_replicas=s.num_replicas, max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={"num_cpus": s.num_cpus, "num_gpus": s.num_gpus, "resources": dict(s.resources)},
    ).bind(model, s.model_dump(), token_digest(token) if token else None)
    serve.run(app, name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return SliderEndpoint(f"http://{host}:{s.port}", model)
