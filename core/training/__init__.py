"""Training: the engine (`engine`: fit, train_one_epoch, evaluate), what it trains on (`batches`, `augment`), how it
steps (`optim`, `lr_finder`), the run's recipe (`config`), process plumbing (`process`) and a run's lifecycle with
the command line (`runner`, `finish`). `python -m core.train` is the command line."""
