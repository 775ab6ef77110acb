"""The Triton side of serving: the gRPC client, and the local CPU server with its rendering.

``client`` (the classifier clients, model loading), ``render`` (the CPU copy of the
repository), and the local server: ``install`` (the wheel's files), ``ports``, ``process``
(supervision), ``state`` (``server.json``) and ``server`` (:func:`serving.triton.server.run_triton`,
which ``python -m serving.triton`` runs).
"""
