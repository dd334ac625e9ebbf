"""The dynamic detector: backbones, composite connection, router, heads, and their assembly."""
