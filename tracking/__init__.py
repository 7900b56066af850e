"""MLflow and Prefect-artifact calls live in tracking.tracker, and nowhere else."""
