"""The pages: ``/`` (a clinician uploads a photo), ``/monitoring`` (drift and live performance
over time) and ``/model-cards/{version}`` (a version's model card). Plain HTML, CSS and vanilla
JS from ``serving/static/``, no CDN; the first two hold no data themselves and call the API with
the key the user types; a model card holds no patient data and needs no key."""

from __future__ import annotations

from functools import cache
from html import escape
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from markdown_it import MarkdownIt

from contracts.labels import BODY_SITES, CLASS_NAMES, CLASSES, CONFIRMATIONS, SEXES
from serving.model_info import model_card

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


# CommonMark with tables; raw HTML in a card is shown as text, never parsed.
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def _card_page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/style.css"></head>'
        '<body><header><h1>Skin-lesion decision support</h1><nav><a href="/">Classify</a>'
        '<a href="/monitoring">Monitoring</a></nav></header>'
        f'<main><article id="model-card">{body}</article></main></body></html>'
    )
    return HTMLResponse(html, status_code=status)


@router.get("/model-cards/{version}", response_class=HTMLResponse)
async def model_card_page(
    request: Request, version: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
) -> HTMLResponse:
    """A version's model card, as a page (the result page links each answer to its version's)."""
    settings = request.app.state.gateway.settings
    try:
        card = model_card(settings.model_repository, settings.model_name, version)
    except FileNotFoundError as exc:
        return _card_page("No model card", f"<p>{escape(str(exc))}</p>", 404)
    return _card_page(f"Model card, version {version}", _MARKDOWN.render(card))


def mount(app: FastAPI) -> None:
    """Serve the pages and their static files on ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
