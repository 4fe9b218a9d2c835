"""Everything about running this predictor under Cog, kept apart from the Cog-free library.

- `schema`: the OpenAPI document `cog build` bakes (`.cog/openapi_schema.json`), which coglet serves and
  validates inputs against;
- `server`: coglet's command and environment, the concurrency `cog build` reads from predict.py, and
  `ServerProcess`, which starts a server, waits for its health, reads its memory and stops it (used by
  `python -m e5 serve`, the tests and the benchmarks).
"""
