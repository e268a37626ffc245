"""Reassignment among an exhaustive tree's leaves (hetclass.stability.reassign): the start
partition and the one-leaf case. The fit itself is checked against the truth in
tests/test_stability_e2e.py (exhaustive) and across MPI ranks in tests/test_mpi.py."""

import numpy as np
import pytest

from hetclass.stability.reassign import leaf_labels, reassign_leaves


def test_leaf_labels_give_each_row_its_leaf_in_leaf_order():
    leaves = [np.array([4, 0, 7]), np.array([2, 5]), np.array([1, 3, 6])]
    rows = np.arange(8)
    assert leaf_labels(leaves, rows).tolist() == [0, 2, 1, 2, 0, 1, 2, 0]


def test_leaf_labels_on_a_subset_of_the_particles():
    rows = np.array([3, 10, 11, 40])
    assert leaf_labels([np.array([40, 3]), np.array([11, 10])], rows).tolist() == [0, 1, 1, 0]


def test_a_particle_in_no_leaf_is_refused():
    with pytest.raises(ValueError):
        leaf_labels([np.array([0, 1])], np.arange(3))


def test_one_leaf_has_nothing_to_reassign():
    def never(*_a, **_k):
        raise AssertionError("no fit with one leaf")
    assert reassign_leaves(None, None, [np.arange(10)], 0, run=never, fit=never) is None
