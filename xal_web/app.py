"""The annotator's routes (Starlette): the page, sign-in and -out, the batch, pixels, CAM tiles, answers.

=================================  ===================================================================
``GET  /``                         the page (``static/index.html``); to ``/login`` without a session
``GET  /login``, ``POST /login``   the login form (only when the server has a token)
``POST /logout``                   revokes the session cookie and deletes it
``GET  /static/NAME``              the page's CSS and JS, from the package (a fixed list of names)
``GET  /api/batch``                the open batch as JSON: classes, frame, progress, items (why each was
                                   picked, in words and as scores), answers; when nothing is pending,
                                   ``finished``: the round the run trains now and about how long
``GET  /api/items/{id}/pixels``    uint16 pixels (``X-Height``, ``X-Width``, ``X-Offset``, ``X-Scale``,
                                   ``X-Image-Info``; gzip when accepted), for window/level
``GET  /api/items/{id}/source``    the same at the source file's resolution (404 with a reason if none)
``GET  /api/items/{id}/cam.png``   the acquiring model's Grad-CAM tile (404 with a reason if none)
``GET  /api/items/{id}/answer``    the item's recorded answer with its ROI (a mask's bits included)
``POST /api/items/{id}/answer``    ``{"label_index" | "label_name", "boxes", "mask", "no_finding",
                                   "annotator", "revises"}``; ``revises`` (the revision seen) corrects
                                   an answer of the open batch
=================================  ===================================================================

The class travels as exactly one of ``label_index`` (an integer) or ``label_name`` (a string): a
value is never read both ways (with classes ``1, 2, 3`` the index 1 is class ``2``). Every refusal
is JSON ``{"error": reason}`` naming the field, with the status that says why: 400 a malformed or
invalid answer (unknown class, a box outside the frame, inverted, of no area or absurdly large, a
mask on a box pool, numbers JSON cannot mean, nesting beyond reason), or a host name this server
was not started for; 401 no session; 403 another origin; 404 an item not in the open batch (or an
id that cannot be one); 408 a body that does not arrive in time; 409 an item no longer pending (or
an answer revised meanwhile, or a batch already taken for training); 413 a body over the cap; 415
not JSON; 429 too many wrong tokens; 503 too many requests at once. Nothing is written unless the
answer is recorded whole. Every response, errors included, carries the security headers
(``guard.SecurityHeaders``) and API responses ``Cache-Control: no-store``: images of patients are
never kept in a browser's disk cache, and one run's item 5 is never shown for another's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from xal_core.loop.ledger import LedgerConflict
from xal_core.loop.oracle import AnnotationDesk, BatchItem, InvalidAnswer, NotPending

from .auth import COOKIE, Gate, LoginThrottle
from .guard import SecurityHeaders
from .views import CamTiles, SourceImages, answer_json, batch_json, display_pixels, encode_pixels

__all__ = ["build_app", "body_cap", "STATIC"]

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"app.css": "text/css", "app.js": "text/javascript", "login.js": "text/javascript"}
ANSWER_FIELDS = frozenset({"label_index", "label_name", "boxes", "mask", "no_finding", "annotator", "revises"})
BODY_SECONDS = 20.0  # a body (answer, login) must arrive within this
_ITEM_ID = re.compile(r"[0-9]{1,12}")
NO_STORE = {"Cache-Control": "no-store"}


def body_cap(frame: tuple[int, int]) -> int:
    """The largest answer accepted: a brush mask of the whole frame in base64, plus 256 boxes."""
    height, width = frame
    return 4 * math.ceil(height * math.ceil(width / 8) / 3) + 64 * 1024


def _refuse(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers={**NO_STORE, **(headers or {})})


def build_app(desk: AnnotationDesk, run_dir: str | Path, *, token: str | None = None,
              annotator: str = "web", run_waits: bool = False) -> SecurityHeaders:
    """The ASGI app of the annotator for ``desk`` (a run's ledger and pool).

    Args:
        desk: the open batch and the door answers go through.
        run_dir: the run folder (round models for the CAM tiles).
        token: the login token; ``None`` leaves the page open (bind to loopback then). Too weak a
            token is a ``ValueError`` (``auth.token_problem`` says why).
        annotator: the name answers carry unless the page gives one.
        run_waits: a run is waiting on this page (``xal run --oracle web``): a finished batch is
            said to be training now, rather than ready for the next ``xal run``.
    """
    gate = Gate(token)
    throttle = LoginThrottle()
    cams = CamTiles(run_dir, desk)
    sources = SourceImages(run_dir)
    cap = body_cap(tuple(desk.pool.size))

    def signed_in(request: Request) -> Response | None:
        return None if gate.allows(request) else _refuse(401, "sign in first (the token is asked on /login)")

    async def page(request: Request) -> Response:
        if not gate.allows(request):
            return RedirectResponse("/login", status_code=303, headers=NO_STORE)
        return FileResponse(STATIC / "index.html", headers=NO_STORE)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return _refuse(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})

    async def login_form(request: Request) -> Response:
        if gate.open:
            return RedirectResponse("/", status_code=303)
        return FileResponse(STATIC / "login.html", headers=NO_STORE)

    async def login(request: Request) -> Response:
        if gate.open:
            return RedirectResponse("/", status_code=303)
        if not gate.same_origin(request):
            return _refuse(403, "the login must come from this server's own page")
        address = request.client.host if request.client else "unknown"
        wait = throttle.wait(address)
        if wait > 0:
            return _too_many(request, wait)
        body = await _read_body(request, 4096)
        if isinstance(body, Response):
            return body
        try:
            fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:
            return _refuse(400, "the login form has one field, token")
        if not gate.token_matches((fields.get("token") or [""])[0].strip()):
            throttle.failed(address)
            return RedirectResponse("/login?failed=1", status_code=303, headers=NO_STORE)
        throttle.succeeded(address)
        response = RedirectResponse("/", status_code=303, headers=NO_STORE)
        response.set_cookie(COOKIE, gate.new_session(), max_age=int(gate.lifetime), httponly=True,
                            samesite="strict", path="/")
        return response

    async def logout(request: Request) -> Response:
        if not gate.same_origin(request):
            return _refuse(403, "the sign-out must come from this server's own page")
        if not gate.open and (session := gate.session(request)) is not None:
            gate.revoke(session)
        response = RedirectResponse("/login" if not gate.open else "/", status_code=303, headers=NO_STORE)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def batch(request: Request) -> Response:
        if (refusal := signed_in(request)) is not None:
            return refusal
        content = await run_in_threadpool(batch_json, desk, annotator=annotator, run_waits=run_waits)
        content["signed_in"] = not gate.open
        return JSONResponse(content, headers=NO_STORE)

    async def open_item(request: Request) -> BatchItem | Response:
        """The path's item if the caller is signed in and it belongs to the open batch, else the refusal."""
        if (refusal := signed_in(request)) is not None:
            return refusal
        text = request.path_params["item_id"]
        if not _ITEM_ID.fullmatch(text):
            return _refuse(404, f"{text[:24]!r} is not an item id of the open batch")
        item = await run_in_threadpool(desk.batch_item, int(text))
        return _refuse(404, f"item {int(text)} is not in the open batch") if item is None else item

    async def pixels(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        values = await run_in_threadpool(display_pixels, desk, item.item_id)
        return await _pixels_response(request, values, None)

    async def source(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        read = await run_in_threadpool(sources.pixels, item.record.row.source_id)
        if isinstance(read, str):
            return _refuse(404, read)
        return await _pixels_response(request, *read)

    async def cam(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        tile = await run_in_threadpool(cams.png, item)
        if isinstance(tile, str):
            return _refuse(404, tile)
        return Response(tile, media_type="image/png", headers=NO_STORE)

    async def recorded(request: Request) -> Response:
        item = await open_item(request)
        if isinstance(item, Response):
            return item
        found = await run_in_threadpool(desk.current_answer, item.item_id)
        if found is None:
            return _refuse(404, f"item {item.item_id} has no answer yet")
        return JSONResponse(answer_json(*found, with_mask=True), headers=NO_STORE)

    async def answer(request: Request) -> Response:
        if (refusal := signed_in(request)) is not None:
            return refusal
        if not gate.same_origin(request):
            return _refuse(403, "answers must come from this server's own page")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _refuse(415, "send the answer as application/json")
        text = request.path_params["item_id"]
        if not _ITEM_ID.fullmatch(text):
            return _refuse(404, f"{text[:24]!r} is not an item id of the open batch")
        item_id = int(text)
        body = await _read_body(request, cap)
        if isinstance(body, Response):
            return body
        try:
            given, revision = await run_in_threadpool(_record, desk, item_id, body, annotator)
        except InvalidAnswer as error:
            return _refuse(400, f"item {item_id}: {error}")
        except (NotPending, LedgerConflict) as error:
            return _refuse(409, str(error))
        return JSONResponse({"item_id": item_id, "label": given.label, "label_name": given.label_name,
                             "revision": revision}, headers=NO_STORE)

    async def not_found(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return _refuse(error.status_code, str(error.detail), dict(error.headers or {}))

    async def crashed(request: Request, error: Exception) -> Response:
        return _refuse(500, "the annotator failed on this request (its console says why); nothing was recorded")

    routes = [
        Route("/", page),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/static/{name}", static),
        Route("/api/batch", batch),
        Route("/api/items/{item_id}/pixels", pixels),
        Route("/api/items/{item_id}/source", source),
        Route("/api/items/{item_id}/cam.png", cam),
        Route("/api/items/{item_id}/answer", recorded, methods=["GET"]),
        Route("/api/items/{item_id}/answer", answer, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: crashed})
    return SecurityHeaders(app)


def _too_many(request: Request, wait: float) -> Response:
    seconds = max(1, math.ceil(wait))
    reason = f"too many wrong tokens from this address: wait {seconds} s before the next try"
    headers = {**NO_STORE, "Retry-After": str(seconds)}
    if "text/html" in request.headers.get("accept", ""):
        page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>xal annotate — wait</title>"
                "<link rel=\"stylesheet\" href=\"/static/app.css\"></head><body class=\"login\"><form>"
                f"<h1>xal annotate</h1><p id=\"failed\">Too many wrong tokens from this address. Wait {seconds} s, "
                "then <a href=\"/login\">sign in again</a>.</p></form></body></html>")
        return HTMLResponse(page, status_code=429, headers=headers)
    return _refuse(429, reason, headers)


async def _pixels_response(request: Request, values: Any, info: dict[str, Any] | None) -> Response:
    data, headers = await run_in_threadpool(encode_pixels, values, info)
    headers = {**headers, **NO_STORE, "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        data = await run_in_threadpool(gzip.compress, data, 4, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type="application/octet-stream", headers=headers)


async def _read_body(request: Request, cap: int) -> bytes | Response:
    """The body, or 413 as soon as it passes ``cap`` bytes (declared or streamed), or 408 when it
    has not arrived within ``BODY_SECONDS``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 15 or int(declared) > cap):
        return _refuse(413, f"the body is over {cap} bytes")
    received = bytearray()
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for part in request.stream():
                received += part
                if len(received) > cap:
                    return _refuse(413, f"the body is over {cap} bytes")
    except TimeoutError:
        return _refuse(408, f"the body did not arrive within {BODY_SECONDS:.0f} s")
    return bytes(received)


class _Unusable:
    """A JSON number no field can mean (an integer of more than 15 digits)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"a {len(self.text)}-digit number"


def _parse(body: bytes) -> Any:
    """JSON, with numbers no field can mean kept as :class:`_Unusable` (refused by the field that holds
    them), NaN/Infinity/1e400 as non-finite floats (refused likewise), nesting capped by Python's."""
    try:
        return json.loads(body, parse_int=lambda text: int(text) if len(text) <= 16 else _Unusable(text),
                          parse_constant=float)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidAnswer(f"the body is not JSON ({error})") from None
    except RecursionError:
        raise InvalidAnswer("the body nests JSON deeper than an answer ever does") from None


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record(desk: AnnotationDesk, item_id: int, body: bytes, default_annotator: str):
    """Parse the answer's JSON and hand it to the desk (``InvalidAnswer`` says what is wrong, by field)."""
    fields = _parse(body)
    if not isinstance(fields, dict):
        raise InvalidAnswer("the body must be a JSON object")
    unknown = sorted(set(fields) - ANSWER_FIELDS)
    if "label" in unknown:
        raise InvalidAnswer("label: not accepted, it could be read as a name or an index; send label_index "
                            f"(0..{len(desk.class_names) - 1}) or label_name")
    if unknown:
        raise InvalidAnswer(f"unknown field(s) {', '.join(name[:40] for name in unknown[:8])}")
    if ("label_index" in fields) == ("label_name" in fields):
        raise InvalidAnswer("give the class as exactly one of label_index (an integer) or label_name (a string)")
    if "label_index" in fields:
        label: int | str = fields["label_index"]
        if not _integer(label):
            raise InvalidAnswer(f"label_index: expected an integer 0..{len(desk.class_names) - 1}, got {label!r}"[:200])
    else:
        label = fields["label_name"]
        if not isinstance(label, str) or not label or len(label) > 500:
            raise InvalidAnswer("label_name: expected a class name")
    boxes = fields.get("boxes")
    if boxes is not None and (not isinstance(boxes, list) or len(boxes) > 256
                              or not all(isinstance(box, list) and len(box) == 4 for box in boxes)):
        raise InvalidAnswer("boxes: expected a list of at most 256 [x_min, y_min, x_max, y_max] (expected 4 numbers)")
    for number, box in enumerate(boxes or []):
        if not all((_integer(v) or isinstance(v, float)) and math.isfinite(v) for v in box):
            raise InvalidAnswer(f"boxes: box {number} needs 4 finite numbers (expected 4 numbers), got "
                                f"{[v if isinstance(v, int | float) else repr(v) for v in box]}"[:300])
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
    revises = fields.get("revises")
    if revises is not None and (not _integer(revises) or not 0 <= revises < 1_000_000):
        raise InvalidAnswer("revises: expected the revision of the answer being corrected (0 = as first given)")
    roi = desk.roi_from_parts(boxes, mask, no_finding)
    given = desk.answer(item_id, label, roi, annotator, revises=revises)
    return given, (0 if revises is None else desk.ledger.revision_counts([item_id]).get(item_id, 0))
