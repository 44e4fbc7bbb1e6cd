"""Explore a data set through a model: a 2-D map of its features, and a review of its labels (issue 16)."""
