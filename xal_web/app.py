"""The annotator's routes (Starlette): the page, the login form, the batch, pixels, CAM tiles, answers.

================================  ====================================================================
``GET  /``                        the page (``static/index.html``); to ``/login`` without a session
``GET  /login``, ``POST /login``  the login form (only when the server has a token)
``GET  /static/…``                the page's CSS and JS, from the package
``GET  /api/batch``               the open batch as JSON: classes, frame, progress, items and answers
``GET  /api/items/{id}/pixels``   float32 pixels (``X-Height``, ``X-Width``), for window/level
``GET  /api/items/{id}/source``   the same at the source file's resolution (404 with a reason if none)
``GET  /api/items/{id}/cam.png``  the acquiring model's Grad-CAM tile (404 with a reason if none)
``POST /api/items/{id}/answer``   ``{"label", "boxes", "mask", "no_finding", "annotator"}``
================================  ====================================================================

Every refusal is JSON ``{"error": reason}`` with the status that says why: 400 a malformed or
invalid answer (unknown class, box outside the frame or inverted), 401 no session, 403 another
origin, 404 an item not in the open batch, 409 an item no longer pending (answered, perhaps in
another tab), 413 a body over the cap, 415 not JSON. Nothing is written unless the answer is
recorded whole. Every response carries a Content-Security-Policy without inline scripts, so text
from the data (class names, ids, annotators: always set with ``textContent``) can never run.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from xal_core.loop.ledger import LedgerConflict
from xal_core.loop.oracle import AnnotationDesk, BatchItem, InvalidAnswer, NotPending

from .auth import COOKIE, Gate
from .views import CamTiles, SourceImages, batch_json, display_pixels

__all__ = ["build_app", "body_cap"]

STATIC = Path(__file__).with_name("static")
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def body_cap(frame: tuple[int, int]) -> int:
    """The largest answer accepted: a brush mask of the whole frame in base64, plus 256 boxes."""
    height, width = frame
    return 4 * math.ceil(height * math.ceil(width / 8) / 3) + 64 * 1024


def _refuse(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers={"Cache-Control": "no-store"})


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        for name, value in _HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def build_app(desk: AnnotationDesk, run_dir: str | Path, *, token: str | None = None,
              annotator: str = "web") -> Starlette:
    """The ASGI app of the annotator for ``desk`` (a run's ledger and pool).

    Args:
        desk: the open batch and the door answers go through.
        run_dir: the run folder (round models for the CAM tiles).
        token: the login token; ``None`` leaves the page open (bind to loopback then).
        annotator: the name answers carry unless the page gives one.
    """
    gate = Gate(token)
    cams = CamTiles(run_dir, desk)
    sources = SourceImages(run_dir)
    cap = body_cap(tuple(desk.pool.size))

    def signed_in(request: Request) -> Response | None:
        return None if gate.allows(request) else _refuse(401, "sign in first (the token is asked on /login)")

    async def page(request: Request) -> Response:
        if not gate.allows(request):
            return RedirectResponse("/login", status_code=303)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def login_form(request: Request) -> Response:
        if gate.open:
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "login.html", headers={"Cache-Control": "no-store"})

    async def login(request: Request) -> Response:
        if gate.open:
            return RedirectResponse("/", status_code=303)
        if not gate.same_origin(request):
            return _refuse(403, "the login must come from this server's own page")
        body = await _read_body(request, 4096)
        if isinstance(body, Response):
            return body
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:
            return _refuse(400, "the login form has one field, token")
        if not gate.token_matches((fields.get("token") or [""])[0].strip()):
            return RedirectResponse("/login?failed=1", status_code=303)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, gate.session_value(), httponly=True, samesite="strict", path="/")
        return response

    async def batch(request: Request) -> Response:
        if (refusal := signed_in(request)) is not None:
            return refusal
        content = await run_in_threadpool(batch_json, desk, annotator=annotator)
        return JSONResponse(content, headers={"Cache-Control": "no-store"})

    async def open_item(request: Request) -> BatchItem | Response:
        """The path's item if the caller is signed in and it belongs to the open batch, else the refusal."""
        if (refusal := signed_in(request)) is not None:
            return refusal
        item_id = request.path_params["item_id"]
        item = await run_in_threadpool(desk.batch_item, item_id)
        return _refuse(404, f"item {item_id} is not in the open batch") if item is None else item

    async def pixels(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        return _pixels_response(await run_in_threadpool(display_pixels, desk, item.item_id))

    async def source(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        values = await run_in_threadpool(sources.pixels, item.record.row.source_id)
        return _refuse(404, values) if isinstance(values, str) else _pixels_response(values)

    async def cam(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        tile = await run_in_threadpool(cams.png, item)
        if isinstance(tile, str):
            return _refuse(404, tile)
        return Response(tile, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def answer(request: Request) -> Response:
        if (refusal := signed_in(request)) is not None:
            return refusal
        if not gate.same_origin(request):
            return _refuse(403, "answers must come from this server's own page")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _refuse(415, "send the answer as application/json")
        body = await _read_body(request, cap)
        if isinstance(body, Response):
            return body
        item_id = request.path_params["item_id"]
        try:
            recorded = await run_in_threadpool(_record, desk, item_id, body, annotator)
        except InvalidAnswer as error:
            return _refuse(400, f"item {item_id}: {error}")
        except (NotPending, LedgerConflict) as error:
            return _refuse(409, str(error))
        return JSONResponse({"item_id": item_id, "label": recorded.label, "label_name": recorded.label_name},
                            headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", page),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/api/batch", batch),
        Route("/api/items/{item_id:int}/pixels", pixels),
        Route("/api/items/{item_id:int}/source", source),
        Route("/api/items/{item_id:int}/cam.png", cam),
        Route("/api/items/{item_id:int}/answer", answer, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])


def _pixels_response(values) -> Response:
    return Response(values.tobytes(), media_type="application/octet-stream",
                    headers={"X-Height": str(values.shape[0]), "X-Width": str(values.shape[1]),
                             "Cache-Control": "private, max-age=3600"})


async def _read_body(request: Request, cap: int) -> bytes | Response:
    """The body, or 413 as soon as it passes ``cap`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        return _refuse(413, f"the body is over {cap} bytes")
    received = bytearray()
    async for part in request.stream():
        received += part
        if len(received) > cap:
            return _refuse(413, f"the body is over {cap} bytes")
    return bytes(received)


def _record(desk: AnnotationDesk, item_id: int, body: bytes, default_annotator: str):
    """Parse the answer's JSON and hand it to the desk (``InvalidAnswer`` says what is wrong)."""
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidAnswer(f"the body is not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise InvalidAnswer("the body must be a JSON object")
    unknown = sorted(set(fields) - {"label", "boxes", "mask", "no_finding", "annotator"})
    if unknown:
        raise InvalidAnswer(f"unknown field(s) {', '.join(unknown)}")
    label = fields.get("label")
    if isinstance(label, bool) or not isinstance(label, int | str):
        raise InvalidAnswer("label: give a class name or index")
    boxes = fields.get("boxes")
    if boxes is not None and (not isinstance(boxes, list) or len(boxes) > 256
                              or not all(isinstance(box, list) for box in boxes)):
        raise InvalidAnswer("boxes: expected a list of at most 256 [x_min, y_min, x_max, y_max]")
    mask_text = fields.get("mask")
    mask = None
    if mask_text is not None:
        if not isinstance(mask_text, str):
            raise InvalidAnswer("mask: expected base64 of the packed mask rows")
        try:
            mask = base64.b64decode(mask_text, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidAnswer("mask: not base64") from None
    no_finding = fields.get("no_finding", False)
    if not isinstance(no_finding, bool):
        raise InvalidAnswer("no_finding: expected true or false")
    annotator = fields.get("annotator") or default_annotator
    if not isinstance(annotator, str):
        raise InvalidAnswer("annotator: expected a name")
    roi = desk.roi_from_parts(boxes, mask, no_finding)
    return desk.answer(item_id, label, roi, annotator)
