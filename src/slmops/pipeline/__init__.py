"""The stage registry, the cached runner, input resolution and (later) recipes."""
