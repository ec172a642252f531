"""`geo_fence`: refuse some countries on one route with 451 (docs/plugins.md).

    plugins:
      - geo_fence: {countries: [US, FR]}

The country is the one the balancer decided for the request (the `geo.country_header` from a
trusted proxy, else the `geo.database` lookup on the client address), so this needs a `geo`
section in the config. A request whose country is unknown is let through, as the global
`geo.blocked_countries` does; to refuse the unknown as well, pair it with `ip_filter`.
`geo.blocked_countries` refuses everywhere; this refuses on the routes that list it (a
game that may not be offered in a jurisdiction where the rest of the site may).
"""

from __future__ import annotations

from balancer.plugins import Plugin, PluginRequest, Response
from plugins._settings import Errors, section, show, string_list


class GeoFence(Plugin):
    def __init__(self, settings: frozenset[str]) -> None:
        super().__init__(settings)
        self.countries = settings

    def on_request(self, request: PluginRequest) -> Response | None:
        country = request.country
        if country is not None and country in self.countries:
            return Response(451, f"unavailable in your jurisdiction ({country})")
        return None

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: Errors) -> frozenset[str] | None:
        settings = section(raw, path, errors, ("countries",), required=("countries",))
        if settings is None or "countries" not in settings:
            return None
        items = string_list(settings["countries"], f"{path}.countries", errors)
        if items is None:
            return None
        if not items:
            errors.append((f"{path}.countries", "list at least one country"))
            return None
        countries: set[str] = set()
        for index, item in enumerate(items):
            if isinstance(item, str) and len(item) == 2 and item.isascii() and item.isalpha():
                countries.add(item.upper())
            else:
                errors.append((f"{path}.countries.{index}",
                               f"expected a two-letter country code (ISO 3166-1 alpha-2), got {show(item)}"))
        return frozenset(countries) if len(countries) == len(items) else None


PLUGIN = GeoFence
