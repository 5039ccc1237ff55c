"""`captioner serve`: a local web page and JSON API over a checkpoint. What a request may ask
for and the server's limits (options.py), reading uploads (uploads.py), gathering concurrent
requests into one forward pass (batching.py), the model's side of a pass (captioning.py), the
JSON answers (records.py), the aiohttp application (app.py) and starting it (server.py); the
page itself is package data in static/.

Imports model, data, config, errors and util; only the CLI imports it. Everything
but options.py and batching.py needs the `serve` extra (aiohttp), which `captioner --help`
never imports.
"""
