"""Running things end to end: one topology (:mod:`.runner`), and the topology × kernel
matrix (:mod:`.plan`, :mod:`.cells`, :mod:`.render`, :mod:`.matrix`)."""
