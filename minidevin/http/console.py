"""The web console and the API reference, served from files inside the package.

- `GET /`: the console's page (`minidevin/web/index.html`), its `<base href="/">`
  set to the public path (`MINIDEVIN_PUBLIC_URL`), so every link in the console is
  relative and it works behind a proxy that serves it under a prefix.
- `GET /console/{file}`: its ES modules and stylesheet (no build step, no CDN).
- `GET /api/docs`: the API reference, Swagger UI (the `swagger-ui-bundle` package's
  files, under `/docs-assets/`) rendering `/api/openapi.json`.

Every answer carries a strict `Content-Security-Policy`: scripts and styles only
from this origin, nothing inline (Swagger UI sets style attributes, so the
reference alone allows inline styles, never inline script).
"""

from __future__ import annotations

import html
import mimetypes
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from minidevin.http.keys import RUNTIME
from minidevin.runtime.errors import NotFound

WEB = Path(__file__).resolve().parent.parent / "web"
DOCS_INIT = Path(__file__).resolve().parent / "docs.js"  # Swagger UI's start, as a file
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # (revalidated: a new version is picked up at once)
}
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<base href="{base}">
<title>minidevin API reference</title>
<link rel="stylesheet" href="docs-assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs-assets/swagger-ui-bundle.js"></script>
<script src="docs-assets/minidevin-docs.js"></script>
</body>
</html>
"""

routes = web.RouteTableDef()


def public_path(request: web.Request) -> str:
    """The path users reach the server under, ending in `/` (`/` without a proxy), escaped
    for the pages' `<base href>`."""
    public_url = request.app[RUNTIME].settings.public_url
    path = urlsplit(public_url).path if public_url else ""
    return html.escape(path.rstrip("/") + "/", quote=True)  # (it goes into an attribute)


def public_origin(request: web.Request) -> str:
    """The origin browsers see: `MINIDEVIN_PUBLIC_URL`'s, or this request's."""
    public_url = request.app[RUNTIME].settings.public_url
    if public_url:
        parts = urlsplit(public_url)
        return f"{parts.scheme}://{parts.netloc}"
    return f"{request.scheme}://{request.host}"


def _page(text: str, csp: str = CSP) -> web.Response:
    response = web.Response(text=text, content_type="text/html", charset="utf-8")
    response.headers.update({**HEADERS, "Content-Security-Policy": csp})
    return response


def _file(root: Path, name: str) -> web.FileResponse:
    """A file under `root` (`name` from the URL: never outside it), or 404."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        raise NotFound("not found")
    kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
    response = web.FileResponse(path)
    response.headers.update({**HEADERS, "Content-Security-Policy": CSP})
    if kind:
        response.content_type = kind
    return response


@routes.get("/")
async def console(request: web.Request) -> web.Response:
    page = (WEB / "index.html").read_text(encoding="utf-8")
    return _page(page.replace('<base href="/">', f'<base href="{public_path(request)}">', 1))


@routes.get("/console/{name:.+}")
async def console_file(request: web.Request) -> web.FileResponse:
    return _file(WEB, request.match_info["name"])


@routes.get("/api/docs")
async def api_docs(request: web.Request) -> web.Response:
    return _page(DOCS_PAGE.format(base=public_path(request)), DOCS_CSP)


@routes.get("/docs-assets/{name:.+}")
async def docs_file(request: web.Request) -> web.FileResponse:
    import swagger_ui_bundle  # (only when the reference is read)

    name = request.match_info["name"]
    if name == "minidevin-docs.js":
        return _file(DOCS_INIT.parent, DOCS_INIT.name)
    return _file(Path(swagger_ui_bundle.swagger_ui_path), name)
