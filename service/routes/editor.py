"""The web editor: `GET /` answers its page; `service/static/` (package data) is mounted at `/static`."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["editor"])


@router.get("/", include_in_schema=False)
def editor_page() -> FileResponse:
    """The editor's page; its scripts and styles are plain files under /static (no build step, no CDN)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
