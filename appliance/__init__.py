"""An MLOps appliance for one box at the edge: ingest, train, serve, monitor, retrain."""

__version__ = "0.1.0"
