"""The FastAPI application: ARM routes, the error envelope, case-insensitive paths."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from scaleset import __version__
from scaleset.api import (
    routes_admin,
    routes_availability_sets,
    routes_dashboard,
    routes_extension_images,
    routes_extension_platform,
    routes_galleries,
    routes_groups,
    routes_history,
    routes_images,
    routes_metrics,
    routes_network,
    routes_operations,
    routes_plan,
    routes_platform,
    routes_rollouts,
    routes_scalesets,
    routes_vms,
    routes_walks,
)
from scaleset.api.errors import install_error_handlers
from scaleset.api.paths import CaseInsensitivePaths
from scaleset.observability.metrics import Metrics
from scaleset.observability.requests import RequestObservation

if TYPE_CHECKING:
    from scaleset.bootstrap import Container


def create_app(container: Container, *, metrics_public: bool = False) -> FastAPI:
    """The app; `metrics_public` lets `GET /metrics` answer without a token (docs/observability.md)."""
    app = FastAPI(
        title="scaleset",
        version=__version__,
        docs_url="/scaleset/docs",
        redoc_url=None,
        openapi_url="/scaleset/openapi.json",
    )
    app.state.container = container
    app.state.metrics = Metrics(container.db)
    app.state.metrics_public = metrics_public
    install_error_handlers(app)
    # Our own endpoints first: `POST .../virtualMachineScaleSets/{name}/{action}` would swallow them.
    routers = [
        m.router
        for m in (
            routes_history,
            routes_walks,
            routes_plan,
            routes_platform,
            routes_extension_platform,
            routes_rollouts,
            routes_galleries,
            routes_vms,
            routes_availability_sets,
        )
    ]
    routers += [
        m.router for m in (routes_groups, routes_scalesets, routes_images, routes_operations, routes_admin)
    ]
    routers += [routes_extension_images.router, routes_extension_images.admin_router]
    routers.append(routes_network.router)
    for router in routers:
        app.include_router(router)
    app.include_router(routes_admin.health_router)
    app.include_router(routes_dashboard.router)
    app.include_router(routes_metrics.router)
    templates = [
        path for router in routers for route in router.routes if (path := getattr(route, "path", None))
    ]
    # Added first, so it runs inside CaseInsensitivePaths and sees the route the router picks.
    app.add_middleware(RequestObservation, metrics=app.state.metrics)
    app.add_middleware(CaseInsensitivePaths, templates=templates)
    return app
