"""The experiment layer: run folders (`runs`), jobs and the device queue (`jobs`, `queue`, `pids`), plans of tasks
in one manifest (`manifest`) with the cross-validation and the grid as plans (`cv`, `cv_files`, `grid`), and Dask
for plans and scans beyond this machine (`cluster`)."""
