"""Task state: the status value and its transitions, the compare-and-set store, change events, and ending
a task from outside the pipeline."""
