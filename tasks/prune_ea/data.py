"""Stage `data` of prune-ea/full: the CIFAR data stage it shares with spos/full (tasks/cifar/data.py)."""
from tasks.cifar.data import CifarSplit, cifar_data_task as data_task

__all__ = ["CifarSplit", "data_task"]
