"""Evaluation: the decisions the product makes (operating point, calibration, promotion) and
the evidence behind them (baselines, lesion-level bootstrap, report).

``run.evaluate`` is one evaluation (``config.EvaluationConfig`` its settings, ``results`` what
it gives); ``cli`` is ``python -m training evaluate``. The scoring modules (``scoring``,
``thresholds``, ``calibration``, ``bootstrap``, ``baselines``, ``promotion``) are pure
numpy/pandas; ``report``/``plots`` draw with matplotlib. Import submodules directly
(``from training.evaluation import thresholds``).
"""
