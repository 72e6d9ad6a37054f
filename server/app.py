"""The Litestar application: routers per protocol, health, lifecycle of the engine."""

from __future__ import annotations

from importlib.resources import files

from litestar import HttpMethod, Litestar, MediaType, Response, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi.config import OpenAPIConfig

from engine import Engine
from server.anthropic.routes import anthropic_router
from server.auth import require_api_key
from server.errors import exception_handler
from server.metrics import CONTENT_TYPE
from server.openai.responses.routes import responses_router
from server.openai.responses.store import ResponseStore
from server.openai.routes import openai_router
from server.state import AnyRequest, ServerSettings, Services, services
from server.tgi.routes import tgi_router
from server.version import VERSION

DEMO_PAGE = files("server").joinpath("static/index.html").read_bytes()


# Every GET route answers HEAD too (health probes use it); uvicorn sends the headers without the body.
GET_HEAD = [HttpMethod.GET, HttpMethod.HEAD]


@route(
    "/",
    http_method=GET_HEAD,
    media_type=MediaType.HTML,
    include_in_schema=False,
    sync_to_thread=False,
    opt={"public": True},
)
def demo_page() -> bytes:
    """The side-by-side demo: the same prompt streamed and not streamed. Open to all, like /health."""
    return DEMO_PAGE


@route("/metrics", http_method=GET_HEAD, media_type=CONTENT_TYPE)
async def metrics(request: AnyRequest) -> bytes:
    """Prometheus metrics, with TGI's names."""
    return await services(request).metrics.render()


@route("/health", http_method=GET_HEAD, sync_to_thread=False, opt={"public": True})
def health(request: AnyRequest) -> Response[dict[str, str]]:
    """200 once the model is loaded and the engine runs; 503 otherwise."""
    if services(request).engine.healthy:
        return Response({"status": "ok"})
    return Response({"status": "unavailable"}, status_code=503)


def create_app(engine: Engine, settings: ServerSettings) -> Litestar:
    api_key = settings.api_key.encode() if settings.api_key else None

    async def start_engine() -> None:
        engine.start()

    def stop_engine() -> None:
        engine.close()

    cors = (
        CORSConfig(allow_origins=list(settings.cors_allow_origins)) if settings.cors_allow_origins else None
    )
    return Litestar(
        route_handlers=[
            openai_router,
            responses_router,
            anthropic_router,
            tgi_router,
            health,
            metrics,
            demo_page,
        ],
        state=State(
            {
                "services": Services(engine, settings),
                "api_key": api_key,
                "responses": ResponseStore(settings.responses_store_size),
            }
        ),
        on_startup=[start_engine],
        on_shutdown=[stop_engine],
        request_max_body_size=settings.payload_limit,
        exception_handlers={Exception: exception_handler},
        guards=[require_api_key],
        cors_config=cors,
        openapi_config=OpenAPIConfig(title="tokenspout", version=VERSION),
        logging_config=None,  # keep the one format `tokenspout serve` set up, not a second one
    )
