"""The fault matrix (issue 16): disruptions of real clusters with acknowledged-write checks."""
