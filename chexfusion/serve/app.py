"""The FastAPI app: the page, ``POST /api/predict`` and ``GET /health``.

``create_app`` loads the model once (or takes an already loaded predictor, as
the tests do) and every request shares it through a :class:`StudyEngine`. The
page and its script and style are served from ``static/`` and the Content
Security Policy allows nothing else: the demo works with no network.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import UserError
from ..name_lists import parse_name_list
from .class_sets import ClassSet
from .engine import StudyEngine
from .heatmap import as_grid
from .limits import UNPROCESSABLE, Rejected, ServeLimits
from .multipart import read_form
from .schemas import ErrorResponse, Finding, Health, HeatMaps, ImageInfo, Limits, PredictResponse, Study
from .uploads import VIEW_CHOICES, PreparedImage, requested_views

STATIC_DIR = Path(__file__).resolve().parent / "static"
FILE_FIELD, VIEW_FIELD, CLASSES_FIELD, MAPS_FIELD = "files", "views", "classes", "maps"
MAP_METHODS = ("attention", "gradcam", "hirescam", "groupcam")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
                                 b"style-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
HEATMAP_SCALING = ("decoder cross-attention averaged over heads and layers; per class divided by its maximum "
                   "over all images of the study (1 = where that finding's query looked most)")
CAM_SCALING = {
    "gradcam": "Grad-CAM of the finding's logit on the backbone map (every finding); averaged to the grid, per class "
               "divided by its maximum over all images of the study",
    "hirescam": "HiResCAM (the finding's logit gradient times the backbone map, cell by cell; every finding); "
                "averaged to the grid, per class divided by its maximum over all images of the study",
    "groupcam": "Group-CAM (blur-masked groups of Grad-CAM channels; the most probable findings only); averaged to "
                "the grid, per class divided by its maximum over all images of the study",
}


class SecurityHeaders:
    """Pure ASGI middleware (it leaves the request body stream alone) adding the headers above."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        return await self.app(scope, receive, send_with_headers)


def _request_body_schema(limits: ServeLimits) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FILE_FIELD],
        "properties": {
            FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                         "description": f"1 to {limits.max_images} images of one study: JPEG, PNG or DICOM "
                                        f"(sniffed from content), each at most {limits.max_file_bytes} bytes, "
                                        f"{limits.max_request_bytes} bytes in all ('files[]' is accepted too)"},
            VIEW_FIELD: {"type": "array", "items": {"type": "string", "enum": list(VIEW_CHOICES)},
                         "description": "one per file, in order (or none: all auto). auto = the DICOM header's "
                                        "ViewPosition, else unknown"},
            MAPS_FIELD: {"type": "string", "enum": list(MAP_METHODS),
                         "description": "optional: the heat maps (default attention; gradcam, hirescam and "
                                        "groupcam take longer, groupcam maps the most probable findings only)"},
            CLASSES_FIELD: {"type": "string",
                            "description": "optional, comma-separated finding names to score instead of the run's "
                                           "classes (runs trained with text queries only; names it never saw are "
                                           "scored zero-shot)"},
        }}}}}}


def _run_name(predictor) -> str:
    run = getattr(predictor, "run", None)
    return Path(run.path).name if run is not None else predictor.kind


def _requested_classes(values: list[str] | None) -> list[str] | None:
    """The names of the optional 'classes' field (one rule with ``predict --classes``), a 422 when malformed."""
    if not values or not "".join(values).strip():
        return None
    try:
        return parse_name_list(values, f"field '{CLASSES_FIELD}'")
    except UserError as exc:
        raise Rejected(UNPROCESSABLE, str(exc)) from None


def _requested_method(values: list[str] | None) -> str:
    method = (values or ["attention"])[-1].strip() or "attention"
    if method not in MAP_METHODS:
        raise Rejected(UNPROCESSABLE, f"field '{MAPS_FIELD}': '{method}' is not one of {', '.join(MAP_METHODS)}")
    return method


def _response(engine: StudyEngine, images: list[PreparedImage], chosen: ClassSet,
              method: str = "attention") -> PredictResponse:
    result = engine.predict(images, chosen, method)
    names = chosen.names
    findings = [Finding(class_name=names[k], probability=float(result.probabilities[k]), group=chosen.groups[k],
                        train_prevalence=None if np.isnan(chosen.train_prevalence[k])
                        else float(chosen.train_prevalence[k]))
                for k in sorted(range(len(names)), key=lambda k: -result.probabilities[k])]
    per_image: list[dict | None] = [None] * len(images)
    for slot, i in enumerate(result.used):
        per_image[i] = {name: as_grid(result.heatmaps[k, slot]) for k, name in enumerate(names)}
    squash = engine.predictor.preprocess.resize == "squash"
    infos = [ImageInfo(name=im.name, format=im.header.format, view=im.view, view_source=im.view_source,
                       width=im.header.width, height=im.header.height, used=i in result.used, preview=im.preview,
                       display_aspect=im.header.width / im.header.height if squash else 1.0)
             for i, im in enumerate(images)]
    height, width = result.heatmaps.shape[-2:]
    heatmaps = HeatMaps(height=height, width=width, scaling=CAM_SCALING.get(method, HEATMAP_SCALING),
                        query_of_class={c: int(q) for c, q in zip(names, chosen.query_index)},
                        images=per_image, method=method,
                        mapped=None if result.mapped is None else [names[k] for k in result.mapped])
    return PredictResponse(run=engine.run_name, kind=engine.kind,
                           study=Study(aggregation=result.aggregation, findings=findings),
                           images=infos, heatmaps=heatmaps)


def _analyse(engine: StudyEngine, files, views, names: list[str] | None, method: str) -> PredictResponse:
    chosen = engine.class_sets.resolve(names)  # may encode names: off the event loop, like the model
    return _response(engine, engine.prepare(files, views), chosen, method)


def create_app(model, limits: ServeLimits | None = None, device: str | None = None) -> FastAPI:
    """The demo app for a run folder (loaded here, once) or an already loaded predictor."""
    from ..inference import load_predictor

    limits = limits or ServeLimits()
    predictor = load_predictor(model, device) if isinstance(model, (str, Path)) else model
    engine = StudyEngine(predictor, limits, _run_name(predictor))
    errors = {code: {"model": ErrorResponse, "description": text} for code, text in (
        (413, "a file, the request or an image's pixel count is over its limit"),
        (415, "not multipart/form-data, or a file that is not a JPEG, PNG or DICOM image"),
        (422, "no file, too many files, a bad view, or an image that cannot be decoded"))}

    # no /docs or /redoc: FastAPI's pages load their scripts from a CDN; /openapi.json stays
    app = FastAPI(title="chexfusion web demo", version=version("chexfusion"), docs_url=None, redoc_url=None,
                  description="Upload the images of one chest X-ray study; get the study's findings, their "
                              "head/medium/tail group, and a heat map per finding over each image.")
    app.state.engine = engine
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(Rejected)
    async def rejected(_request: Request, exc: Rejected):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", response_model=Health, summary="the loaded model and the upload limits")
    async def health() -> Health:
        return Health(status="ok", run=engine.run_name, kind=engine.kind, classes=engine.classes,
                      scores_other_names=engine.class_sets.accepts_names, max_images_scored=engine.max_images,
                      limits=Limits(**limits.describe()))

    @app.post("/api/predict", response_model=PredictResponse, responses=errors,
              summary="score one study from its images", openapi_extra=_request_body_schema(limits))
    async def predict(request: Request) -> PredictResponse:
        form = await read_form(request.headers, request.stream(), limits, {FILE_FIELD}, {VIEW_FIELD, CLASSES_FIELD,
                                                                                         MAPS_FIELD})
        if not form.files:
            raise Rejected(UNPROCESSABLE, f"no images: send 1 to {limits.max_images} files in the "
                                          f"'{FILE_FIELD}' field")
        views = requested_views(form.fields.get(VIEW_FIELD), len(form.files))
        names = _requested_classes(form.fields.get(CLASSES_FIELD))
        method = _requested_method(form.fields.get(MAPS_FIELD))
        return await run_in_threadpool(_analyse, engine, form.files, views, names, method)

    return app


__all__ = ["create_app", "STATIC_DIR"]
