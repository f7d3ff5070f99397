"""Run directories: the folder layout, the experiment that training runs, loaded runs, best epoch."""
