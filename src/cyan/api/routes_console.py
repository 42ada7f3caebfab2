"""The web console at `/` and the API's docs at `/docs`, both served from the package: no CDN, no internet, no
build step (the files in src/cyan/console are the source). The console signs in through the API like any client
(POST /oauth/token) and calls nothing but the API (docs/console.md)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["CONSOLE_DIR", "install_console"]

#: The console's files, shipped as package data.
CONSOLE_DIR = Path(str(files("cyan").joinpath("console")))
_SWAGGER = "/console/vendor/swagger-ui"

#: The console loads only its own files and talks only to this server; nothing inline, so an injected string
#: cannot run as script.
_CONSOLE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def install_console(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=_CONSOLE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{_SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{_SWAGGER}/favicon-32x32.png",
        )

    # Revalidated on every load (ETag), so an upgraded server is never shown with an old script.
    app.mount("/console", StaticFiles(directory=CONSOLE_DIR, check_dir=True), name="console")
