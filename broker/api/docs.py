"""API documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), from vendored assets.

Hospital networks are often air-gapped: FastAPI's default pages load their scripts, styles,
favicon and fonts from public CDNs and stay blank there. These pages load only files shipped in
`broker/static/` (swagger-ui-dist and redoc's standalone bundle, licenses beside them), no web
fonts, and Swagger UI's online spec validator is switched off, so nothing leaves the broker.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

router = APIRouter(include_in_schema=False)

OPENAPI_URL = "/openapi.json"
TITLE = "Compute Broker API"


@router.get("/docs")
async def swagger_ui():
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=TITLE,
                               swagger_js_url="/static/swagger-ui-bundle.js",
                               swagger_css_url="/static/swagger-ui.css",
                               swagger_favicon_url="/static/favicon.png",
                               oauth2_redirect_url="/docs/oauth2-redirect",
                               swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": False})


@router.get("/docs/oauth2-redirect")
async def swagger_ui_redirect():
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc():
    return get_redoc_html(openapi_url=OPENAPI_URL, title=TITLE, redoc_js_url="/static/redoc.standalone.js",
                          redoc_favicon_url="/static/favicon.png", with_google_fonts=False)
