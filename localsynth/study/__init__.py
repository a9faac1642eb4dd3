"""The paper's study as one command: its config, the plan of runs and cells, running them, and the report."""
