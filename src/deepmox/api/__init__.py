"""The daemon's HTTP port: the jobs API, ``/healthz``, and (from their own
modules) the metrics, the live feed and the status page.

The daemon calls :func:`serve_api`; everything else is for tests and for
modules that add routes.
"""

from __future__ import annotations

from .app import App, Health, Request, Response, Route, create_app
from .auth import Access, Tokens
from .errors import HttpError
from .server import serve_api

__all__ = ["Access", "App", "Health", "HttpError", "Request", "Response", "Route", "Tokens",
           "create_app", "serve_api"]
