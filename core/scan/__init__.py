"""Scanning whole observations: read a window at a time (`raster`, `georef`), plan and run the chunks
(`scanner`, on Dask through core.experiment.cluster), what a scan found and its output formats (`detections`), and
a scan as the app's job (`job`). `python -m core.scan` is the command line."""
