"""`python -m core.train COMMAND`: the training command line (run, cv, grid, report, score, promote, lr-find),
kept at this address for the scripts, jobs and docs that call it. The commands live in `core.training.runner`; the
engine in `core.training.engine`."""
import signal
import sys

# A job cancelled while the imports below still load (seconds) must still end 'cancelled': run as a program, this
# module notes SIGTERM from here on and core.training.process.StopFlag reads the note. Imported, nothing changes.
_EARLY_SIGTERM: list[int] = []
if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: _EARLY_SIGTERM.append(1))

    from core.training.runner import main

    sys.exit(main())
