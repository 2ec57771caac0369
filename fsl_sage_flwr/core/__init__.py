"""The framework-free core of FSL-SAGE: split models, gradient estimation, alignment, buffers, training loops."""
