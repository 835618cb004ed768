"""The review page of a swap-ready folder: a local web server (server.py) and its plain
static files (static/: HTML, JS, CSS; no build step). See docs/design.md, "Review page"."""
