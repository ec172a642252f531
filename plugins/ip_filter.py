"""`ip_filter`: allow and deny client networks on one route; 403 (docs/plugins.md).

    plugins:
      - ip_filter: {allow: [10.0.0.0/8, 192.168.1.7], deny: [10.6.6.0/24]}

Deny wins over allow; a non-empty `allow` refuses every address it does not list. The address
is the client's: the TCP peer, or the one carried by a PROXY header from a trusted proxy (not
X-Forwarded-For, which any client can write).
"""

from __future__ import annotations

from dataclasses import dataclass

from balancer.addresses import parse_ip
from balancer.plugins import Plugin, PluginRequest, Response
from plugins._settings import Errors, IPNetwork, network, section, string_list

# Decisions per address, cleared when full: a hit costs one dict lookup.
_CACHE_MAX = 65536


@dataclass(frozen=True, slots=True)
class IpFilterSettings:
    allow: tuple[IPNetwork, ...]
    deny: tuple[IPNetwork, ...]


class IpFilter(Plugin):
    def __init__(self, settings: IpFilterSettings) -> None:
        super().__init__(settings)
        self.allow = settings.allow
        self.deny = settings.deny
        self.decisions: dict[str, bool] = {}

    def on_request(self, request: PluginRequest) -> Response | None:
        ip = request.client_ip
        allowed = self.decisions.get(ip)
        if allowed is None:
            allowed = self.allows(ip)
            if len(self.decisions) >= _CACHE_MAX:
                self.decisions.clear()
            self.decisions[ip] = allowed
        return None if allowed else Response(403, "forbidden")

    def allows(self, ip: str) -> bool:
        address = parse_ip(ip)
        if address is None:
            return not self.allow  # an address we cannot read is in no allowed network
        if any(address in net for net in self.deny):
            return False
        return not self.allow or any(address in net for net in self.allow)

    @classmethod
    def parse_settings(cls, raw: object, path: str, errors: Errors) -> IpFilterSettings | None:
        settings = section(raw, path, errors, ("allow", "deny"))
        if settings is None:
            return None
        before = len(errors)
        lists: dict[str, tuple[IPNetwork, ...]] = {}
        for key in ("allow", "deny"):
            items = string_list(settings.get(key, []), f"{path}.{key}", errors) or []
            nets = [network(item, f"{path}.{key}.{i}", errors) for i, item in enumerate(items)]
            lists[key] = tuple(n for n in nets if n is not None)
        if len(errors) == before and not lists["allow"] and not lists["deny"]:
            errors.append((path, "give allow or deny networks (or both)"))
        if len(errors) > before:
            return None
        return IpFilterSettings(allow=lists["allow"], deny=lists["deny"])


PLUGIN = IpFilter
