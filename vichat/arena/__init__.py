"""The arena without its pages: battles, votes in SQLite, visitors and limits, ratings, audit.

Nothing here imports gradio; :mod:`vichat.app` holds the tabs and handlers that use it.
"""
