"""Figures and tables from many RUN.h5 files (see analysis/figures.py)."""
