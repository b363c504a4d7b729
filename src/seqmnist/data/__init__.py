"""MNIST as files: the IDX format, the mirrors it is fetched from, and the processed splits."""
