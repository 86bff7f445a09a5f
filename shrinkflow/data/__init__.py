"""Data: sources (digits, Fashion-MNIST, npz, ...), validation, and the prepare step's
split / normalisation / fingerprint."""
