"""localsynth: synthetic training data for text classifiers, and an honest measure of its worth.

Importing the package is cheap: torch, transformers and vLLM are imported only by the stages
and backends that need them.
"""

__version__ = "0.1.0"
