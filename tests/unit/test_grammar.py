"""One grammar for the names and values the balancer did not parse off the wire
(balancer/grammar.py): the config, the plugin API and the plugins' settings agree."""

import pytest

from balancer.grammar import FIELD_VALUE, TOKEN
from balancer.plugins import PluginResponse
from plugins._settings import header_name, header_value


@pytest.mark.parametrize("name", ["X-Game-Id", "set-cookie", "a!#$%&'*+-.^_`|~9"])
def test_tokens(name):
    assert TOKEN.fullmatch(name)
    errors: list = []
    assert header_name(name, "plugins.x.settings.name", errors) == name and not errors


@pytest.mark.parametrize("name", ["", "a b", "a:b", "naïve", "name\n", "(x)"])
def test_not_tokens(name):
    assert not TOKEN.fullmatch(name)
    errors: list = []
    assert header_name(name, "plugins.x.settings.name", errors) is None
    assert errors and errors[0][0] == "plugins.x.settings.name"


@pytest.mark.parametrize("value", ["café", "a\r\nb", "nul\x00", "bell\x07"])
def test_a_value_the_balancer_sends_is_visible_ascii(value):
    """RFC 9110 §5.5: obs-text is tolerated on receipt, never generated; a plugin's setting and a
    plugin's header edit refuse the same values."""
    assert not FIELD_VALUE.fullmatch(value)
    errors: list = []
    assert header_value(value, "plugins.x.settings.value", errors) is None and errors
    response = PluginResponse(200, [])
    with pytest.raises(ValueError, match="invalid"):
        response.headers.set("X-A", value)


def test_tabs_and_spaces_are_values():
    assert FIELD_VALUE.fullmatch("a b\tc")
    response = PluginResponse(200, [])
    response.headers.set("X-A", "a b\tc")
