"""Stage `export` of spos/full: the classifier export it shares with prune-ea/full (tasks/cifar/export.py),
winner first, r_c = MACs / winner's MACs."""
from tasks.cifar.export import INT8_COLUMNS, Exported, export_classifiers_task as export_task

__all__ = ["INT8_COLUMNS", "Exported", "export_task"]
