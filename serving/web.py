"""The two pages: ``/`` (a clinician uploads a photo) and ``/monitoring`` (drift and live
performance over time). Plain HTML, CSS and vanilla JS from ``serving/static/``, no CDN;
the pages hold no data themselves and call the API with the key the user types."""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from contracts.labels import BODY_SITES, CLASS_NAMES, CLASSES, CONFIRMATIONS, SEXES

STATIC = Path(__file__).resolve().parent / "static"
router = APIRouter(include_in_schema=False)


def _options(values: tuple[str, ...], selected: str | None = None) -> str:
    return "\n".join(
        f'<option value="{escape(v)}"{" selected" if v == selected else ""}>{escape(v)}</option>'
        for v in values
    )


# How a diagnosis was confirmed, in words (the API's values: contracts.labels.CONFIRMATIONS).
CONFIRMATION_NAMES = {
    "histo": "histopathology",
    "follow_up": "follow-up",
    "consensus": "expert consensus",
    "confocal": "confocal microscopy",
}


def _labelled(labels: dict[str, str]) -> str:
    return "\n".join(
        f'<option value="{escape(v)}">{escape(name)} ({escape(v)})</option>'
        for v, name in labels.items()
    )


@cache
def _page(name: str) -> str:
    # Filled once from the label contract, so the dropdowns cannot drift from the API's enums.
    html = (STATIC / name).read_text()
    classes = {c: CLASS_NAMES[c] for c in CLASSES}
    confirmations = {c: CONFIRMATION_NAMES[c] for c in CONFIRMATIONS}
    return (
        html.replace("<!--BODY_SITES-->", _options(BODY_SITES))
        .replace("<!--SEXES-->", _options(SEXES, "unknown"))
        .replace("<!--CLASSES-->", _labelled(classes))
        .replace("<!--CONFIRMATIONS-->", _labelled(confirmations))
    )


@router.get("/", response_class=HTMLResponse)
async def index() -> str:
    return _page("index.html")


@router.get("/monitoring", response_class=HTMLResponse)
async def monitoring_page() -> str:
    return _page("monitoring.html")


def mount(app: FastAPI) -> None:
    """Serve the pages and their static files on ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
