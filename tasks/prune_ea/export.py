"""Stage `export` of prune-ea/full: the classifier export it shares with spos/full (tasks/cifar/export.py),
baseline first, r_c = MACs / baseline MACs."""
from tasks.cifar.export import INT8_COLUMNS, Exported, export_classifiers_task as export_task

__all__ = ["INT8_COLUMNS", "Exported", "export_task"]
