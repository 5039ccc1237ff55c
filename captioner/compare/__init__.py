"""`captioner compare`: the same decoder trained with each recurrent cell on the same features
(cells.py), and the page that shows what differs (page.py). Imports training and below."""
