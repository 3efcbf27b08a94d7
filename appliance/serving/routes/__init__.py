"""The HTTP API's routes, one module per resource: health, pipelines, predict, models, data
(ingestions and jobs), datasets (held ones released or discarded), events, monitoring, feature
sets.

Each module's ``ROUTES`` lists its handlers, plain functions registered by ``create_app``
in the order the OpenAPI document lists them. Handlers declare the daemon's parts as a
``context: Context`` parameter, which Litestar injects from the app's state (the app's
``context`` dependency); none is a closure over them. Predict is the exception, built
with the app: see ``routes/predict.py``.

Plain route handlers rather than Controllers: Litestar registers a Controller as a Router,
which re-creates each path's route from a set of its handlers, so the order of the
``Allow`` header of a 405 would vary from run to run; plain handlers keep it as it was.
"""
