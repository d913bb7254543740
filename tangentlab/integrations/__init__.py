"""Bridges from tangentlab to other libraries.

* :mod:`tangentlab.integrations.laplace`: curvature backends for laplace-torch
  (``pip install -c constraints.txt -e ".[laplace]"``; imported on demand, so
  ``import tangentlab`` never needs laplace-torch).
"""
