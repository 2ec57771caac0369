"""FSL-SAGE on text: a decoder-only transformer of one's own, written in plain torch, split as a SplitSpec."""
