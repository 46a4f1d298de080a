"""The applications: the command line (cli.py), the local web app (web.py) and job files (jobs.py), all making
videos through one request type and one render path (render.py). Nothing below imports them; the web app and
jobs never import the command line (it dispatches to them)."""
