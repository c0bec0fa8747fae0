"""The web app's page: ``GET /`` and ``/static/`` (plain HTML, CSS and JavaScript shipped in ``static/``)."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static"


def add_pages(app: FastAPI) -> None:
    """Adds ``GET /`` (the page, revalidated on every load) and mounts ``/static``."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
