"""Stage `export` of prune-ea/full: the classifier export it shares with spos/full (tasks/cifar/export.py),
baseline first, r_c = MACs / baseline MACs."""
from tasks.cifar.export import Exported, export_classifiers_task as export_task

__all__ = ["Exported", "export_task"]
