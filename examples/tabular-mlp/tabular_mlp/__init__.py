"""FSL-SAGE on tabular data: a split MLP on scikit-learn's breast cancer data set."""
