"""Knowledge editing (METHODS.md §2, §7): the slot engine (``engine``) and the recipe (``run``)."""
