"""Plugins that live outside the built-ins, loaded by dotted path the way a third party's are."""
