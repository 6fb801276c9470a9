"""bench/scale: issue 14's scale-out performance figures (python -m bench.scale; see __main__.py)."""
