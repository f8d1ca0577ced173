"""Task data: the synthetic demo task and loaders for Hub datasets and local files."""

from kdnas.data.demo import demo_datasets, generate_demo
from kdnas.data.task import TaskData, load_task

__all__ = ["TaskData", "demo_datasets", "generate_demo", "load_task"]
