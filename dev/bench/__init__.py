"""The speed bench (see README.md beside this file); run it as `python bench/run.py`."""
