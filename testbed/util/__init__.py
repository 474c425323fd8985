"""Small helpers every stage shares: atomic files and JSON caches, subprocess steps,
text tables, logging.  They import nothing from the pipeline stages."""
