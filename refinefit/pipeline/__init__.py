"""Whole movies: ``refine_movie`` plans chunks of frames, reads ahead,
refines chunks in lanes or on a Dask cluster, and commits them for resuming."""
