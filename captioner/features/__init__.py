"""Features: the fc7 cache, so that training reads each image's features instead of running
the CNN. Float16 shards on disk keyed by everything that changes the numbers (cache.py), and
extracting a config's splits into it (extract.py), shared by any number of processes. Imports
model, data, config, errors and util."""
