"""The Triton side of serving: model configs, the local CPU server and its rendered repository.

``python -m serving.triton`` starts the real ``tritonserver`` binary on this machine; other
code starts one with :func:`serving.triton.server.run_triton`.
"""
