"""The labelling loop (issue 31): rank a source's windows by what the model needs (`strategies`), write them as a
queue (`queue`), and keep each person's answer in a labelled-tiles source (`store`) that trains like any other.

`python -m core.label candidates SOURCE --strategy S --budget N --out QUEUE` makes a queue; the Label page works
through it."""
