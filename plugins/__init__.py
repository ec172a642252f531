"""The built-in plugins (docs/plugins.md).

`balancer.compiled` decides, before any plugin module is found, whether the compiled or the
pure modules run (all or none): a compiled plugin cimports the compiled views of
`balancer.plugins`, so it must never be loaded beside the pure ones."""

import balancer.compiled  # noqa: F401  (installs the pure build's finder when it is the one)
