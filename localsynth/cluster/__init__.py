"""SLURM: site settings, job scripts rendered from templates, the job plan of a stage or study, submission."""
