"""Pages: the HTML kit every page of the project is built from (the style sheet, sections,
figures, tag badges: html.py) and the matplotlib plots those pages show (plots.py), so the
report, the diff, the cell comparison and the served page look alike. Imports only util."""
