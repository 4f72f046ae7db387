"""I/O, one folder or module per seam."""
