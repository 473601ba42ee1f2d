"""The HTTP model service: the champion and, during a rollout, a canary behind one FastAPI app.

    python -m lib.serving --host 127.0.0.1 --port 8080 --model-name playstore-rating \\
        --tracking-uri sqlite:///mlflow.db

A request goes through these modules, in this order:

* `settings`  ServingSettings: model name, tracking URI, store, batching, admin token (from
              SERVING_ADMIN_TOKEN).
* `app`       create_app / serve: the routes (/predict, /feedback, /health, /metrics,
              /admin/routing, /admin/reload), admin auth as a dependency, /openapi.json.
* `schemas`   the request bodies as pydantic models (App in Play Store or clean spelling,
              PredictRequest, Feedback, RoutingUpdate), validated straight from the raw bytes;
              `fields` reads each value through `lib.values`, the grammar training reads too.
* `rows`      the model's input row (FEATURE_COLUMNS order) and its DataFrame.
* `routing`   ModelService: loaded variants, the canary's weight (a stable hash of the request
              id, so a caller stays on one variant) and its lease (not renewed -> weight 0).
* `batching`  MicroBatcher: concurrent single-row requests share one predict call; an idle
              queue never waits.
* `predictor` Predictor: the model through its compiled form (`compiled`, `encoders`: the
              arithmetic of scikit-learn without its per-call validation, ~20x faster for one
              row), used only when it equals scikit-learn bit for bit on probe rows.
* `metrics`   Prometheus counters and histograms; `prediction_store` logs every prediction
              in a background writer (no request waits on the disk); analyses in other
              processes read it with its read-only `PredictionReader`.
"""
