"""A router that says at once when none of its routes can match a path.

The app includes its routers in an order that matters (app.py), and FastAPI matches a request against
every route of every router before the one that takes it, one route at a time, each through a few layers
of Python: a function call was matched against about 90 routes, ~40% of its HTTP stage. Each router here
first tries one regular expression, the union of its routes' own; when that fails, none of its routes can
match the path, so the router is skipped exactly as if each route had been tried. When it succeeds the
routes are tried in order as before, so which route takes a request does not change.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope

__all__ = ["IndexedRouter"]

#: A named group of a route's pattern (`(?P<device>[^/]+)`): unnamed in the union, where names repeat.
_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


class IndexedRouter(APIRouter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._union: re.Pattern[str] | None = None
        self._union_of = -1  # how many routes the union was made of

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            union = self._routes_union()
            if union is not None and union.match(get_route_path(scope)) is None:
                return Match.NONE, {}
        return super().matches(scope)

    def _routes_union(self) -> re.Pattern[str] | None:
        """The union of the routes' patterns; None when a route has none (it may match anything)."""
        if self._union_of != len(self.routes):
            regexes = [getattr(route, "path_regex", None) for route in self.routes]
            patterns = [regex.pattern for regex in regexes if isinstance(regex, re.Pattern)]
            self._union = None
            if patterns and len(patterns) == len(regexes):
                self._union = re.compile("|".join(f"(?:{_NAMED_GROUP.sub('(?:', p)})" for p in patterns))
            self._union_of = len(self.routes)
        return self._union
