"""Everything about running this predictor under Cog, kept apart from the Cog-free library.

- `folders`: the folder coglet leaves behind for every prediction, removed once its prediction is done;
- `schema`: the OpenAPI document `cog build` bakes (`.cog/openapi_schema.json`), which coglet serves and
  validates inputs against;
- `server`: coglet's command and environment, and the concurrency `cog build` reads from predict.py (what
  `python -m e5 serve` runs; the tests and benchmarks start servers through `tests/server_process.py`).
"""
