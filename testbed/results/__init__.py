"""Results of a run: the JSON model, and the files written from it."""

from .model import RunResult

__all__ = ["RunResult"]
