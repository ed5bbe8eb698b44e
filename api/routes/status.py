"""GET /status: the live status page (api/static/status.html), which polls /api/cluster.

The page is open even with API keys configured (``api.auth.EXEMPT``): it holds no data, and
a browser cannot send a bearer token when it navigates. Its polls carry the key it is given
(``/status?key=...``); docs/operations.md, "Status page".
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()


@cache
def _page() -> str:
    return files("api").joinpath("static", "status.html").read_text(encoding="utf-8")


@router.get("/status", response_class=HTMLResponse, include_in_schema=False)
async def status() -> HTMLResponse:
    # no-cache: an upgraded API serves its own page, not one a browser kept
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})
