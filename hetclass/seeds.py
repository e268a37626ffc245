"""Randomness: one root ``SeedSequence`` per run, a named stream per purpose.

Every random draw in hetclass comes from ``stream(seed, name, *index)``: a new
``SeedSequence`` whose spawn key is the root's key extended by the stream's fixed number and
the given indices. Nothing here ever calls ``spawn()`` (which advances the sequence it is
called on, so results would depend on how often and in which order someone else drew from
it); the same ``(seed, name, index)`` always gives the same numbers, whatever the thread, MPI
rank or task order.

>>> a = rng(7, "init", 0).integers(1000); b = rng(7, "init", 0).integers(1000); a == b
True
"""

from __future__ import annotations

from typing import Union

import numpy as np

from .errors import InputError

SeedLike = Union[int, np.integer, np.random.SeedSequence]

# stream numbers are part of the results' definition: never renumber, only add (9 was
# reserved for EM split moves, never used)
STREAMS = {
    "half_sets": 1,      # the random 50/50 split when rlnRandomSubset is absent
    "init": 2,           # initial random-subset assignments of an EM start (index: start)
    "reseed": 3,         # re-seeding of empty classes (index: start, iteration)
    "replicate": 4,      # a stability replicate's seed (index: replicate)
    "subsample": 5,      # a replicate's particle subsample (index: replicate)
    "analysis": 6,       # stability analysis (bootstraps, permutations)
    "null": 7,           # the calibrated null of the stability verdict (index: null run)
    "node": 8,           # an exhaustive-tree node (index: path)
    "explore_subset": 10,  # the particles exploration starts use when there are many
    "within": 11,        # stability: sub-classifications inside a class (index: class, fit)
    "pair": 12,          # stability: a pair of neighbouring classes classified again (a, b)
    "split_merge": 13,   # the split halves of an exploration's merge-and-split move (index: move)
    "pose_spread": 14,   # stability: the particles that measure the STAR pose errors
    "set_aside": 15,     # stability: scores of a K again without one replicate (index: K)
    "reassign": 16,      # exhaustive: the tree's particles refined among its leaves
    "confirm": 17,       # stability: a borderline class pair classified again alone (K, a, b)
}


def root(seed: SeedLike) -> np.random.SeedSequence:
    """The root sequence of ``seed`` (an int >= 0, or a sequence used as it is);
    InputError naming ``--seed`` for anything else."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if seed is None or isinstance(seed, bool) or int(seed) < 0:
        raise InputError("seed must be an integer >= 0", field="--seed", value=seed)
    return np.random.SeedSequence(int(seed))


def stream(seed: SeedLike, name: str, *index: int) -> np.random.SeedSequence:
    """The ``SeedSequence`` of stream ``name`` (and ``index``) under ``seed``."""
    base = root(seed)
    key = tuple(base.spawn_key) + (STREAMS[name],) + tuple(int(i) for i in index)
    return np.random.SeedSequence(base.entropy, spawn_key=key,
                                  pool_size=base.pool_size)


def rng(seed: SeedLike, name: str, *index: int) -> np.random.Generator:
    """A ``Generator`` on :func:`stream`."""
    return np.random.default_rng(stream(seed, name, *index))

