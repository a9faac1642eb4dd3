"""Real datasets: the study's sources and `localsynth data import`."""
