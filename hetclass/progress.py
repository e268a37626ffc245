"""The types of the two callbacks the core takes from its callers (docs/architecture.md).

``progress(event, **info)``: the core reports through it and never prints. Events: ``batch``
(``stage``, ``done``, ``total``), ``iteration`` (``it``, ``max_iter``, ``changed_pct``: the %
of the particles that had a class whose class changed, ``first_assigned``: how many had none
(after exploration on a subset), ``class_fractions``, ``resolution_A``), ``explore_start``,
``explore_done``, ``message`` (``text``); the replicate code adds ``k`` and ``replicate`` to
the engine's events and sends ``replicate``, ``k_done``, ``node_start`` and ``node``.
Each front end decides how to show them.

``abort_check()``: called between batches; raises :class:`hetclass.errors.AbortRequested`
to stop the run.
"""

from typing import Any, Callable, Protocol


class Progress(Protocol):
    """``progress(event, **info)`` (see the module docstring)."""

    def __call__(self, event: str, **info: Any) -> None: ...


AbortCheck = Callable[[], None]
