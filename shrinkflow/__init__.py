"""shrinkflow: train, compress, convert, validate and prove; see README.md."""
