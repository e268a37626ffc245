"""hetclass as a RELION External job (console script ``hetclass_relion``, see :mod:`.main`)."""
