"""sorobust: second-order certified robustness (Singla & Feizi, ICML 2020), reproducible and sound."""

__version__ = "0.1.0"
