import pytest

import tangentlab as tl

from . import oracle
from .models import ARCHS


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_exact_fisher_dense_matches_oracle(arch):
    model, x, y = ARCHS[arch]()
    F = tl.fim(model, (x, y), "exact", "dense", batch_size=4)
    assert oracle.rel_err(F.to_dense(), oracle.fisher_exact(model, x)) < 1e-10
