"""Bundled recipes. This package only carries the YAML files, so that a bare recipe name resolves the same way
whether distill is installed editable or from a wheel."""
