"""`captioner compare`: which recurrent cell captions best. The same decoder trained with each
cell on the same features, once per seed (cells.py, with the shared encoder in encoders.py, the
shared data in shared.py and one cell's training and measurements in training.py); objects
scored by their place in a caption (positions.py); figures over seeds (seeds.py); the page and
its plots (page.py, plots.py); compare.json's typed records (records.py). Imports training
and below."""
