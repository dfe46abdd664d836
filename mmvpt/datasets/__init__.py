"""Datasets (imported lazily: they build on mmpretrain / mmseg)."""
