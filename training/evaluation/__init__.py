"""Evaluation: the decisions the product makes (operating point, calibration, promotion) and
the evidence behind them (baselines, lesion-level bootstrap, report).

The submodules are pure numpy/pandas except ``report``/``plots`` (matplotlib) and the wiring in
``training/evaluate.py``; import them directly (``from training.evaluation import thresholds``).
"""
