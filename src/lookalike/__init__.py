"""Lookalike: visual "you may also like" recommendations on Spark, Delta Lake and MLflow."""

__version__ = "0.1.0"
