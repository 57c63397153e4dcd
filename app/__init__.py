"""Vigil: anomaly detection for multivariate sensor time series."""

__version__ = "0.1.0"
