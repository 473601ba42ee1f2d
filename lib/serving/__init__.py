"""The HTTP model service: the champion and, during a rollout, a canary behind one FastAPI app.

    python -m lib.serving --host 127.0.0.1 --port 8080 --model-name playstore-rating \\
        --tracking-uri sqlite:///mlflow.db

A request goes through these modules, in this order: `settings` (ServingSettings), `app` (the
routes, admin auth, /openapi.json), `schemas` and `fields` (the request bodies as pydantic
models, values read through `lib.values` as in training), `rows` (the model's input row),
`routing` (ModelService: variants, the canary's weight by a stable hash of the request id, its
lease), `batching` (MicroBatcher: concurrent requests share one predict call), `predictor` (the
compiled form of the model, `compiled` and `encoders`, used only when it equals scikit-learn bit
for bit), `metrics` (Prometheus) and `prediction_store` (every prediction, written by a
background writer; other processes read it with `PredictionReader`).
"""
