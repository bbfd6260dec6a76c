"""Python client, CLI and load generator for the ml-serving MQTT forecasting service."""

from mlserving_client.client import Client, ClientStats, Prediction, PredictionError, PredictionTimeout
from mlserving_client.load import LoadResult, LoadSpec, TenantTarget, run_load

__all__ = [
    "Client",
    "ClientStats",
    "LoadResult",
    "LoadSpec",
    "Prediction",
    "PredictionError",
    "PredictionTimeout",
    "TenantTarget",
    "run_load",
]
