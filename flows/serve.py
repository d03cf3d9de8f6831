"""``bulletin serve``: placeholder until the scheduling issue lands."""
