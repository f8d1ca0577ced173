"""Task data: the synthetic demo task and loaders for Hub datasets and local files."""

from kdnas.data.demo import demo_datasets
from kdnas.data.demo import generate_demo
from kdnas.data.task import load_task
from kdnas.data.task import TaskData


__all__ = ["TaskData", "demo_datasets", "generate_demo", "load_task"]
